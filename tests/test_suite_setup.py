"""The suite's own set-up (tests/conftest.py): XLA's quick-compile flags are in force where
this XLA accepts them, and a flag it does not know is refused rather than passed on (XLA
aborts a process whose XLA_FLAGS name an unknown flag)."""

import os

import conftest
import jax
import numpy as np


def test_quick_compile_flags_are_in_force_unless_opted_out():
    flags = os.environ.get("XLA_FLAGS", "").split()
    quick = conftest.QUICK_COMPILE_FLAGS
    opted_out = os.environ.get("COUPLED_SGD_TEST_XLA_DEFAULTS") == "1"
    if opted_out or not conftest._xla_accepts(" ".join(quick)):  # e.g. a later XLA drops one
        assert not set(quick) & set(flags)
    else:
        names = {f.split("=")[0] for f in flags}  # a value the user set for one is kept
        assert {f.split("=")[0] for f in quick} <= names
    # and programs compiled under them compute what they should
    x = np.linspace(-2.0, 2.0, 7)
    np.testing.assert_allclose(jax.jit(lambda v: (v**2).sum())(x), (x**2).sum(), rtol=1e-15)


def test_a_flag_xla_does_not_know_is_refused():
    assert not conftest._xla_accepts("--xla_no_such_flag_exists=1")
