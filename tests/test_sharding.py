"""The agent axis sharded over devices gives the results of one device (float tolerance).

The same small runs — a coupled discrete run (`run_agents` + EASGD on a noisy quadratic), a
coupled SDE `solve` with a quorum variable, and asynchronous runs (a worker pool and DASGD,
a batch of seeds split over the devices) — execute in two fresh Python processes, one with
a single CPU device and one with `XLA_FLAGS=--xla_force_host_platform_device_count=4`, and
their arrays are compared. A fresh process is needed because the device count is fixed when
JAX starts. Run this file as a script (`python tests/test_sharding.py OUT.npz`) to get one
side's arrays.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
NUM_DEVICES = 4
TIMEOUT_S = 150


def _compute() -> dict[str, np.ndarray]:
    """Every run of the comparison on `agent_mesh()` (all devices of this process)."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    jax.config.update("jax_enable_x64", True)

    from algorithms import easgd, landscape_oracle, run_agents
    from algorithms.sharding import (
        AGENT_AXIS,
        agent_mesh,
        replicate,
        shard_agents,
        sharded_oracle,
    )
    from dynamics.coupling import Quorum
    from dynamics.landscapes import Quadratic
    from dynamics.noise import IsotropicNoise
    from dynamics.solve import solve
    from dynamics.system import CoupledSystem

    mesh = agent_mesh()
    devices = mesh.shape[AGENT_AXIS]
    num_agents, dim = 8, 5
    landscape = Quadratic(np.linspace(0.5, 2.0, dim))
    x0 = jr.normal(jr.key(1), (num_agents, dim))
    params = shard_agents(x0, mesh)
    out: dict[str, np.ndarray] = {"devices": np.array(devices)}

    # Coupled discrete run: EASGD (a replicated center variable) with Gaussian gradient noise.
    oracle = sharded_oracle(landscape_oracle(landscape, IsotropicNoise(0.5)), mesh)
    run = run_agents(
        easgd(0.05, 1.0), params, oracle, num_steps=40, key=replicate(jr.key(2), mesh),
        record_every=10,
    )  # fmt: skip
    out["easgd_params"] = np.asarray(run.params)
    out["easgd_center"] = np.asarray(run.opt_state[0].aux)
    out["easgd_records"] = np.asarray(run.metrics["params"])
    out["easgd_losses"] = np.asarray(run.metrics["losses"])
    shards = {str(shard.index) for shard in run.params.addressable_shards}
    out["easgd_params_shards"] = np.array(len(shards))
    # The same run placed by the runner itself, as the CLI's --devices does.
    from algorithms.sharding import use_agent_mesh

    with use_agent_mesh(mesh):
        implicit = run_agents(
            easgd(0.05, 1.0), x0, landscape_oracle(landscape, IsotropicNoise(0.5)),
            num_steps=40, key=jr.key(2), record_every=10,
        )  # fmt: skip
    out["implicit_mesh_params"] = np.asarray(implicit.params)
    out["implicit_mesh_shards"] = np.array(
        len({str(shard.index) for shard in implicit.params.addressable_shards})
    )
    if devices > 1:  # N = 6 cannot be split over 4 devices: the error names both numbers
        try:
            shard_agents(np.zeros((devices + 2, dim)), mesh)
        except ValueError as e:
            out["divisibility_error"] = np.array(str(e))

    # Coupled SDE: quorum coupling, z replicated, x split over the devices.
    system = CoupledSystem(landscape, Quorum(1.0, 0.5), IsotropicNoise(0.3))
    sol = solve(system, params, t1=0.5, step_size=0.01, key=jr.key(3), saveat=6)
    out["sde_x"] = np.asarray(sol.x)
    out["sde_z"] = np.asarray(sol.aux)

    # Asynchronous runs, a batch of seeds split over the devices.
    from algorithms.asynchrony import (
        compute_time,
        constant_rate,
        run_dasgd,
        run_pool,
        uniform_delay,
    )

    def grad_fn(x, key):
        noise = 0.3 * jr.normal(key, x.shape, x.dtype)
        return landscape.value(x), landscape.grad(x) + noise

    seeds = shard_agents(jr.split(jr.key(4), 2 * devices if devices > 1 else 8), mesh)
    theta0 = jnp.ones(dim)

    @jax.jit
    def pool(keys):
        def one(key):
            res = run_pool(
                grad_fn, constant_rate(0.05), theta0, key,
                times=compute_time("exponential", 4), num_arrivals=2, num_steps=30,
            )  # fmt: skip
            return res.params, res.trace.staleness

        return jax.vmap(one)(keys)

    @jax.jit
    def dasgd(keys):
        def one(key):
            res = run_dasgd(
                grad_fn, theta0, key, num_agents=4, delay=uniform_delay(2),
                learning_rate=0.05, num_steps=20,
            )  # fmt: skip
            return res.params, res.trace.staleness_mean

        return jax.vmap(one)(keys)

    out["pool_params"], out["pool_staleness"] = map(np.asarray, pool(seeds))
    out["dasgd_params"], out["dasgd_staleness"] = map(np.asarray, dasgd(seeds))
    return out


def _start_side(tmp_path: Path, num_devices: int) -> tuple[subprocess.Popen, Path]:
    path = tmp_path / f"devices{num_devices}.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={num_devices}"])
    proc = subprocess.Popen(
        [sys.executable, __file__, str(path)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, path


def _finish_side(proc: subprocess.Popen, path: Path, num_devices: int) -> dict[str, np.ndarray]:
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(
            f"the {num_devices}-device run took over {TIMEOUT_S} s:\n{proc.communicate()[1]}"
        )
    if proc.returncode != 0:
        pytest.fail(f"the {num_devices}-device run failed ({proc.returncode}):\n{stderr}")
    with np.load(path) as data:
        return dict(data)


@pytest.fixture(scope="module")
def both_sides(tmp_path_factory):
    # The two processes run side by side: each spends most of its time compiling, on one core.
    tmp_path = tmp_path_factory.mktemp("sharding")
    started = [(*_start_side(tmp_path, n), n) for n in (1, NUM_DEVICES)]
    return tuple(_finish_side(*side) for side in started)


NAMES = (
    "implicit_mesh_params",
    "easgd_params",
    "easgd_center",
    "easgd_records",
    "easgd_losses",
    "sde_x",
    "sde_z",
    "pool_params",
    "pool_staleness",
    "dasgd_params",
    "dasgd_staleness",
)


def test_device_counts_as_requested(both_sides):
    one, many = both_sides
    assert int(one["devices"]) == 1 and int(many["devices"]) == NUM_DEVICES
    # The final parameters really were split: one distinct shard per device.
    assert int(one["easgd_params_shards"]) == 1
    assert int(many["easgd_params_shards"]) == NUM_DEVICES
    assert int(many["implicit_mesh_shards"]) == NUM_DEVICES
    message = str(many["divisibility_error"])
    assert f"N={NUM_DEVICES + 2}" in message and f"D={NUM_DEVICES}" in message


@pytest.mark.parametrize("name", NAMES)
def test_same_results_on_one_and_many_devices(both_sides, name):
    one, many = both_sides
    assert one[name].shape == many[name].shape
    np.testing.assert_allclose(many[name], one[name], rtol=1e-10, atol=1e-12)


def test_mesh_and_divisibility_errors():
    import jax

    from algorithms.sharding import agent_mesh, check_divisible, shard_agents

    available = jax.device_count()
    with pytest.raises(ValueError, match=f"requested {available + 1} devices but only"):
        agent_mesh(available + 1)
    with pytest.raises(ValueError, match="num_devices must be an integer >= 1"):
        agent_mesh(0)
    mesh = agent_mesh(1)
    check_divisible(7, mesh)  # anything divides over one device
    with pytest.raises(ValueError, match="cannot infer the agent axis"):
        shard_agents({"x": np.zeros((8, 3)), "z": np.zeros(3)}, mesh)


def test_shard_agents_replicates_leaves_without_agent_axis():
    from jax.sharding import PartitionSpec as P

    from algorithms.sharding import agent_mesh, shard_agents

    mesh = agent_mesh(1)
    tree = {"x": np.ones((8, 3)), "z": np.ones(3), "k": np.int32(0)}
    tree = shard_agents(tree, mesh, num_agents=8)
    assert tree["x"].sharding.spec == P("agents")
    assert tree["z"].sharding.spec == P() and tree["k"].sharding.spec == P()


if __name__ == "__main__":
    np.savez(sys.argv[1], **_compute())
