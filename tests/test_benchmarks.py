"""The benchmark tools' own logic (timings live in `make bench`, never in tests)."""

import jax
import jax.numpy as jnp

from benchmarks.profile_training import hlo_kinds


def test_hlo_kinds_finds_matmuls_inside_fusions_and_names_their_jax_operation():
    def f(w, x):
        return jnp.tanh(x @ w).sum() + jnp.sum(w * 2.0)

    w, x = jnp.ones((16, 8)), jnp.ones((4, 16))
    compiled = jax.jit(jax.grad(f)).lower(w, x).compile().as_text()
    kinds = hlo_kinds(compiled)
    matmuls = [source for kind, source in kinds.values() if kind == "matmul"]
    # Forward x·w and the backward xᵀ·dy: two products, however XLA fuses them.
    assert len(matmuls) == 2, kinds
    assert any("transpose" in source for source in matmuls)
    assert {kind for kind, _ in kinds.values()} <= {"matmul", "copy", "other"}
    assert any(kind == "other" for kind, _ in kinds.values())  # tanh, sums, the scaling


def test_sharding_speedups_pair_each_sharded_run_with_its_uncoupled_reference():
    from benchmarks.bench_training import sharding_speedups

    rates = {"jax": 100.0, "jax[2 dev]": 130.0}
    devices = {"jax": 1, "jax[2 dev]": 2}
    uncoupled = {"jax_uncoupled": 110.0, "jax_uncoupled[2 dev]": 198.0}
    out = sharding_speedups(rates, devices, uncoupled)
    assert out.keys() == {"2"}
    assert abs(out["2"]["easgd"] - 1.3) < 1e-12
    assert abs(out["2"]["uncoupled"] - 1.8) < 1e-12
    # Without a one-device reference there is nothing to divide by: no entry, no error.
    assert sharding_speedups(rates, devices, {"jax_uncoupled[2 dev]": 198.0}) == {}


def test_sharding_note_reports_both_speedups_and_the_rate_easgd_would_reach():
    from benchmarks.plot import _sharding_note

    at_goal = {
        "agent_steps_per_s": {"jax": 100.0, "jax[2 dev]": 130.0, "torch_vmap[1t]": 50.0,
                              "torch_vmap[2t]": 60.0},
        "sharding_speedup": {"2": {"easgd": 1.3, "uncoupled": 1.8}},
        "jax_cpu_us_per_agent_step": {"jax": 120.0, "jax[2 dev]": 170.0, "jax_uncoupled": 110.0,
                                      "jax_uncoupled[2 dev]": 115.0},
    }  # fmt: skip
    (note,) = _sharding_note(64, at_goal)
    assert "EASGD 120 µs on one device and 170 µs on 2, uncoupled SGD 110 and 115 µs" in note
    assert "uncoupled SGD" in note and "1.80×" in note and "EASGD 1.30×" in note
    assert "(1.80×, at most 2×), EASGD would run at 180 agent-steps/s, 3.0× `torch.func`" in note
    # A reference faster than D× (noise in its one-device run) is capped at D×.
    at_goal["sharding_speedup"]["2"]["uncoupled"] = 2.4
    (note,) = _sharding_note(64, at_goal)
    assert "(2.00×, at most 2×), EASGD would run at 200 agent-steps/s" in note
    assert _sharding_note(64, {"agent_steps_per_s": {"jax": 1.0}}) == []


def test_kernels_note_lists_xla_and_each_pytorch_thread_setting():
    from benchmarks.plot import _kernels_note

    def k(us, gflops, cores):
        return {"us_per_agent_step": us, "gflop_per_s": gflops, "cores_busy": cores}

    training = {
        "goal_agents": 64,
        "matmul_kernels": {
            "xla[1 dev]": k(58.4, 44.9, 1.04),
            "torch_bmm[1t]": k(74.1, 35.4, 0.99),
            "torch_bmm[2t]": k(41.9, 62.7, 1.98),
        },
    }
    (note,) = _kernels_note(training)
    assert "(N = 64," in note
    assert "XLA on one device 58 µs per agent-step (45 GFLOP/s, 1.0 cores busy)" in note
    assert "with 1 thread 74 µs per agent-step (35 GFLOP/s, 1.0 cores busy)" in note
    assert "with 2 threads 42 µs per agent-step (63 GFLOP/s, 2.0 cores busy)." in note
    assert _kernels_note({"goal_agents": 64}) == []  # JSON from before the measurement


def test_step_products_compute_the_weight_gradients_of_a_linear_chain():
    """`step_products` against autodiff: for h_L = x·W_0·…·W_{L-1} and the loss
    ½‖h_L‖², the gradient of W_l is h_lᵀ·dy_l, the products the benchmark times."""
    import numpy as np

    from benchmarks.bench_training import step_products, step_products_flops

    rng = np.random.default_rng(0)
    widths = (5, 7, 6, 3)
    weights = [jnp.asarray(rng.standard_normal((2, a, b))) for a, b in zip(widths[:-1], widths[1:])]
    x = jnp.asarray(rng.standard_normal((2, 4, widths[0])))

    def loss(ws):
        h = x
        for w in ws:
            h = h @ w
        return 0.5 * jnp.sum(h**2)

    expected = jax.grad(loss)(weights)
    grads = step_products(x, weights, jnp.matmul, lambda a: jnp.swapaxes(a, 1, 2))
    for got, want in zip(grads, expected[::-1]):
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # 2·B·(3·Σ w_l w_{l+1} − w_0 w_1): 3 forward, 3 xᵀ·dy, 2 dy·Wᵀ products.
    forward = 5 * 7 + 7 * 6 + 6 * 3
    assert step_products_flops(hidden=(7, 6), batch=4, inputs=5, classes=3) == 2 * 4 * (
        3 * forward - 5 * 7
    )


def test_benchmark_names_accept_short_names_and_reject_unknown_ones_before_running():
    import pytest

    from benchmarks.__main__ import BENCHMARKS, benchmark_names

    assert benchmark_names(["sde", "bench_rng", "rng"]) == ["bench_sde", "bench_rng"]
    assert set(benchmark_names([])) <= set(BENCHMARKS) and "bench_sde" in benchmark_names([])
    with pytest.raises(SystemExit, match=r"'sde2'.*known: rng, sde"):
        benchmark_names(["sde", "sde2"])


def test_time_alternating_warms_up_only_the_named_contenders():
    import pytest

    from benchmarks.timing import time_alternating

    calls = {"a": 0, "b": 0}

    def contender(name):
        def run():
            calls[name] += 1
            return name

        return run

    out = time_alternating({k: contender(k) for k in calls}, repeats=3, warm_up=("a",))
    assert calls == {"a": 4, "b": 3}
    assert all(len(out[k]["all_s"]) == 3 for k in calls)
    time_alternating({k: contender(k) for k in calls}, repeats=2)  # default: all warmed up
    assert calls == {"a": 7, "b": 6}
    with pytest.raises(ValueError, match="'c'"):
        time_alternating({"a": contender("a")}, repeats=1, warm_up=("c",))


def test_table_writes_a_speed_up_below_one_as_slower():
    from benchmarks.plot import _faster

    assert _faster(2.34) == "2.3× faster"
    assert _faster(1.0) == "1.00× faster"
    assert _faster(0.8) == "1.2× slower"
    assert _faster(0.97) == "1.03× slower"  # not "1.0× slower"


def test_bandwidth_note_adds_the_products_time_and_a_compute_floor_at_the_largest_n():
    from benchmarks.plot import notes

    scaling = {
        "copy_bandwidth_bytes_per_s": 5e9,
        "rows": [{"agents": 1024, "devices": 2, "bytes_per_step_bound": 1.25e8,
                  "time_per_step_s": 0.2}],
    }  # fmt: skip
    kernels = {"xla[1 dev]": {"us_per_agent_step": 1.0, "gflop_per_s": 40.0, "cores_busy": 1.0}}
    training = {
        "goal_agents": 64,
        "matmul_kernels": kernels,
        "step_products_flops_per_agent": 2.6e6,
    }
    (line,) = [
        n for n in notes({"bench_scaling": scaling, "bench_training": training}) if "MiB" in n
    ]
    assert "25.0 ms at the measured copy bandwidth, against 200.0 ms measured" in line
    # 1024 agents × 2.6 MFLOP over 2 devices at 40 GFLOP/s each: 33.3 ms.
    assert "products alone would take 33.3 ms" in line and "each of 2 devices" in line
    (line,) = [n for n in notes({"bench_scaling": scaling}) if "MiB" in n]
    assert line.endswith("200.0 ms measured.")
    # The fastest JAX rate at N = 64 (PyTorch's is not this project's) sets a compute floor:
    # 1024 agents at 10,240 agent-steps/s take 100 ms, against a 25 ms bound.
    training["per_agents"] = {
        "64": {
            "agent_steps_per_s": {"jax": 100.0, "torch_vmap[1t]": 20000.0},
            "uncoupled_agent_steps_per_s": {"jax_uncoupled[2 dev]": 10240.0},
        }
    }
    (line,) = [
        n for n in notes({"bench_scaling": scaling, "bench_training": training}) if "MiB" in n
    ]
    assert "(jax_uncoupled[2 dev], 10,240 agent-steps/s, the parameters in the cache)" in line
    assert line.endswith("it would take 100.0 ms (bound / step time 25 %).")
