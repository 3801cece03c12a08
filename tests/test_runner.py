"""The recorded scan and the multi-agent runner: records, divergence, continuation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from algorithms.coupling import euler_optimizer
from algorithms.loop import recorded_scan
from algorithms.optimizers import easgd
from algorithms.oracles import landscape_oracle, sde_matched_oracle
from algorithms.runner import AgentState, run_agents
from dynamics.coupling import Quorum
from dynamics.landscapes import LogCoshQuadratic, Quadratic
from dynamics.noise import IsotropicNoise
from dynamics.system import CoupledSystem


def test_runner_records_divergence_with_its_step_and_no_nans():
    # GD on ½ a x² diverges when h a > 2: |x| grows by |1 − ha| = 2 per step.
    f = Quadratic([3.0])
    res = run_agents(optax.sgd(1.0), jnp.ones((2, 1)), landscape_oracle(f),
                     num_steps=100, key=jax.random.key(0), record_every=10,
                     divergence_threshold=1e6)  # fmt: skip
    assert int(res.diverged_step) == 19  # 2^20 > 1e6 first after step index 19
    assert np.all(np.isfinite(res.metrics["params"]))
    ok = run_agents(optax.sgd(0.1), jnp.ones((2, 1)), landscape_oracle(f), num_steps=10,
                    key=jax.random.key(0))  # fmt: skip
    assert int(ok.diverged_step) == -1


def test_runner_is_deterministic(getkey):
    system = CoupledSystem(LogCoshQuadratic(2, 0.1), Quorum(1.0, 0.2), IsotropicNoise(0.5))
    x0, key = jax.random.normal(getkey(), (4, 2)), getkey()
    run = lambda: run_agents(euler_optimizer(system, 0.05), x0, sde_matched_oracle(system, 0.05),  # noqa: E731
                             num_steps=40, key=key, record_every=8)  # fmt: skip
    a, b = run(), run()
    np.testing.assert_array_equal(a.metrics["params"], b.metrics["params"])
    assert a.metrics["params"].shape == (6, 4, 2)
    np.testing.assert_array_equal(a.steps, [0, 8, 16, 24, 32, 40])


def test_runner_under_vmap_over_runs(getkey):
    f = LogCoshQuadratic(1, 0.1)
    keys = jax.random.split(getkey(), 3)
    out = jax.vmap(
        lambda k: (
            run_agents(
                easgd(0.1, 1.0),
                jnp.zeros((4, 1)),
                landscape_oracle(f, IsotropicNoise(1.0)),
                num_steps=20,
                key=k,
            ).params
        )  # fmt: skip
    )(keys)
    assert out.shape == (3, 4, 1) and not np.allclose(out[0], out[1])


def test_state_form_hook_equals_losses_form_and_is_an_agent_state(getkey):
    f = LogCoshQuadratic(2, 0.1)
    x0, key = jax.random.normal(getkey(), (3, 2)), getkey()
    oracle = landscape_oracle(f, IsotropicNoise(0.4))
    kwargs = dict(num_steps=12, key=key, record_every=4)
    seen = []

    def state_form(state):
        seen.append(type(state))
        return {"x": state.params}

    a = run_agents(easgd(0.1, 1.0), x0, oracle, metrics_fn=state_form, **kwargs)
    b = run_agents(easgd(0.1, 1.0), x0, oracle, metrics_fn=lambda p, s, losses: {"x": p},
                   **kwargs)  # fmt: skip
    assert seen and all(t is AgentState for t in seen)
    np.testing.assert_array_equal(a.metrics["x"], b.metrics["x"])
    np.testing.assert_array_equal(a.params, b.params)


def test_runner_in_two_pieces_equals_one_piece_bitwise(getkey):
    f = LogCoshQuadratic(2, 0.1)
    x0, key = jax.random.normal(getkey(), (3, 2)), getkey()
    oracle = landscape_oracle(f, IsotropicNoise(0.7))
    whole = run_agents(easgd(0.1, 1.0), x0, oracle, num_steps=30, key=key, record_every=5)
    first = run_agents(easgd(0.1, 1.0), x0, oracle, num_steps=10, key=key, record_every=5)
    second = run_agents(
        easgd(0.1, 1.0), first.params, oracle, num_steps=20, key=key, record_every=5,
        opt_state=first.opt_state, start_step=10, diverged_step=int(first.diverged_step),
    )  # fmt: skip
    np.testing.assert_array_equal(second.params, whole.params)
    joined = np.concatenate([first.metrics["params"], second.metrics["params"][1:]])
    np.testing.assert_array_equal(joined, whole.metrics["params"])
    np.testing.assert_array_equal(np.concatenate([first.steps, second.steps[1:]]), whole.steps)


def test_noise_table_contract_oracle_steps():
    """The updates call the oracle at steps 0…K−1; the last record calls it at step K for its
    losses only. So a table of K rows gives the numbers of a table of K + 1 rows, and a table
    that misses rows used by updates makes the run diverge exactly at the first missing row."""
    f = Quadratic([1.0, 2.0])
    num_steps, x0 = 12, jnp.ones((2, 2))
    table = jax.random.normal(jax.random.key(3), (num_steps + 1, 2, 2))
    steps_seen = []

    def run(rows):
        oracle = landscape_oracle(f, IsotropicNoise(0.5), noise_table=table[:rows])
        return run_agents(optax.sgd(0.1), x0, oracle, num_steps=num_steps, key=jax.random.key(0),
                          record_every=4)  # fmt: skip

    exact, extra = run(num_steps), run(num_steps + 1)
    np.testing.assert_array_equal(exact.metrics["params"], extra.metrics["params"])
    np.testing.assert_array_equal(exact.metrics["losses"], extra.metrics["losses"])
    assert int(exact.diverged_step) == -1
    short = run(7)
    assert int(short.diverged_step) == 7  # the first update without a row
    np.testing.assert_array_equal(short.metrics["params"][1], exact.metrics["params"][1])

    # the steps at which the oracle is called, in both hook forms
    def spy(params, key, step):
        jax.debug.callback(lambda k: steps_seen.append(int(k)), step)
        return landscape_oracle(f)(params, key, step)

    run_agents(optax.sgd(0.1), x0, spy, num_steps=4, key=jax.random.key(0), record_every=2,
               metrics_fn=lambda state: state.params)  # fmt: skip
    assert sorted(steps_seen) == [0, 1, 2, 3]
    steps_seen.clear()
    run_agents(optax.sgd(0.1), x0, spy, num_steps=4, key=jax.random.key(0), record_every=2)
    assert sorted(steps_seen) == [0, 0, 1, 2, 2, 3, 4]


def test_block_check_finds_the_exact_first_bad_step_inside_a_block():
    # The check runs once per block (end state + every step's output); a failed block is
    # replayed step by step, so a loss that is NaN only at step 5 of the block 4–7 is found
    # at step 5 even though the state is healthy at the block's end.
    def step(x, k):
        return x + 1.0, jnp.where(k == 5, jnp.nan, 0.0)

    def healthy(x, loss):
        return jnp.all(jnp.isfinite(loss)) & (x < 1e6)

    res = jax.jit(
        lambda x: recorded_scan(step, x, num_steps=12, record_every=4,
                                metrics_fn=lambda x, k: x, healthy=healthy)
    )(jnp.asarray(0.0))  # fmt: skip
    assert int(res.diverged_step) == 5
    # the bad block is undone (x stays 4); the next block runs again from there
    np.testing.assert_array_equal(res.metrics, [0.0, 4.0, 4.0, 8.0])


def test_recorded_scan_records_trace_and_freezes_on_divergence():
    # x ← 2x from x = 1 with records every 3 steps: x_k = 2^k; unhealthy once x > 100
    def step(x, k):
        return 2.0 * x, k

    res = jax.jit(
        lambda x: recorded_scan(step, x, num_steps=12, record_every=3,
                                metrics_fn=lambda x, k: (x, k), healthy=lambda x, k: x < 100.0)
    )(jnp.asarray(1.0))  # fmt: skip
    assert int(res.diverged_step) == 6  # x_7 = 128 after step index 6
    np.testing.assert_array_equal(res.trace, np.arange(12))
    xs, ks = res.metrics
    np.testing.assert_array_equal(ks, [0, 3, 6, 9, 12])
    np.testing.assert_array_equal(res.steps, [0, 3, 6, 9, 12])
    # the bad block (steps 6–8) is undone, and so is every later one
    np.testing.assert_array_equal(xs, [1.0, 8.0, 64.0, 64.0, 64.0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_steps=10, record_every=3), "multiple of record_every"),
        (dict(num_steps=-1), "num_steps"),
        (dict(num_steps=4, record_every=0), "record_every"),
        (dict(num_steps=4, start_step=-2), "start_step"),
    ],
)
def test_recorded_scan_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        recorded_scan(lambda x, k: (x, None), jnp.zeros(()), **kwargs)
