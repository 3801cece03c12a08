"""Two JAX processes on loopback agree with one process.

`experiments.harness.distributed.initialize` joins two fresh Python processes through a
coordinator on 127.0.0.1, with Gloo CPU collectives and two CPU devices each, launched in two
ways: by hand (`COUPLED_SGD_NUM_PROCESSES`, `COUPLED_SGD_PROCESS_ID`, and JAX's own
`JAX_COORDINATOR_ADDRESS`), and as a SLURM job step would start them (`SLURM_*` variables that
JAX itself reads under `cluster=True`). Each process builds only its own half of the agents
(`process_slice` + `agents_from_process_local`); a coupled EASGD run and a coupled SDE solve
on the 4-device global mesh must equal the same runs in a single one-device process. Run
this file as a script (`python tests/test_multiprocess.py OUT.npz [--cluster]`) for one
process's side. Also checks the settings parser (flags, environment) without starting processes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120
NUM_AGENTS, DIM = 8, 5


def _compute(cluster: bool = False) -> dict[str, np.ndarray]:
    """The runs on `agent_mesh()`; under multi-process, each process supplies its agents."""
    from experiments.harness.distributed import initialize, process_slice

    config = initialize(cluster=cluster, timeout_s=60)

    import jax
    import jax.random as jr

    jax.config.update("jax_enable_x64", True)

    from algorithms import easgd, landscape_oracle, run_agents
    from algorithms.sharding import (
        agent_mesh,
        agents_from_process_local,
        gather,
        replicate,
        sharded_oracle,
    )
    from dynamics.coupling import Quorum
    from dynamics.landscapes import Quadratic
    from dynamics.noise import IsotropicNoise
    from dynamics.solve import solve
    from dynamics.system import CoupledSystem

    mesh = agent_mesh()
    landscape = Quadratic(np.linspace(0.5, 2.0, DIM))
    # Every process could draw all of x0; it takes only its own agents, as a data loader would.
    x0 = np.asarray(jr.normal(jr.key(1), (NUM_AGENTS, DIM)))
    params = agents_from_process_local(x0[process_slice(NUM_AGENTS)], mesh, NUM_AGENTS)
    oracle = sharded_oracle(landscape_oracle(landscape, IsotropicNoise(0.5)), mesh)
    run = run_agents(
        easgd(0.05, 1.0), params, oracle, num_steps=40, key=replicate(jr.key(2), mesh),
        record_every=10,
    )  # fmt: skip
    system = CoupledSystem(landscape, Quorum(1.0, 0.5), IsotropicNoise(0.3))
    sol = solve(system, params, t1=0.5, step_size=0.01, key=replicate(jr.key(3), mesh), saveat=6)
    out = gather(
        {
            "easgd_params": run.params,
            "easgd_records": run.metrics["params"],
            "easgd_losses": run.metrics["losses"],
            "sde_x": sol.x,
            "sde_z": sol.aux,
        }
    )
    out["processes"] = np.array(jax.process_count())
    out["devices"] = np.array(jax.device_count())
    out["process_id"] = np.array(-1 if config is None else config.process_id)
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict[str, str]:
    prefixes = ("COUPLED_SGD_", "SLURM_", "JAX_COORDINATOR", "OMPI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env.update(
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(REPO),
        XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
        **extra,
    )
    return env


def _start(out: Path, env: dict[str, str], *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, str(out), *flags], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_all(procs: list[subprocess.Popen], what: str) -> None:
    """Wait for every process; on a timeout or a failure kill the rest and show their output."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    failed = [p for p in procs if p.poll() is None or p.returncode != 0]
    if failed:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        logs = "\n".join(f"--- process {i}:\n{p.communicate()[0]}" for i, p in enumerate(procs))
        pytest.fail(f"{what}: a process timed out ({TIMEOUT_S} s) or failed\n{logs}")
    for proc in procs:
        proc.communicate()


def _by_hand(i: int, port: str) -> dict[str, str]:
    """Process i of two started by hand: our two variables and JAX's coordinator address."""
    return dict(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        COUPLED_SGD_NUM_PROCESSES="2",
        COUPLED_SGD_PROCESS_ID=str(i),
    )


def _slurm(i: int, port: str) -> dict[str, str]:
    """Process i of a two-task SLURM job step on this machine (what srun would export)."""
    return dict(
        SLURM_JOB_ID="7",
        SLURM_STEP_NODELIST="127.0.0.1",
        SLURM_NTASKS="2",
        SLURM_PROCID=str(i),
        SLURM_LOCALID=str(i),
        JAX_COORDINATOR_PORT=port,
    )


LAUNCHES = {"by_hand": (_by_hand, ()), "slurm": (_slurm, ("--cluster",))}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    _wait_all([_start(tmp / "single.npz", _env(1))], "single-process reference")
    return dict(np.load(tmp / "single.npz"))


# The SLURM launch differs from the by-hand one only in how the processes find each other
# (jax.distributed's cluster detection): `make test-slow` runs it.
@pytest.fixture(
    scope="module",
    params=[pytest.param("by_hand"), pytest.param("slurm", marks=pytest.mark.slow)],
)
def procs(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    variables, flags = LAUNCHES[request.param]
    port = str(_free_port())
    started = [
        _start(tmp / f"proc{i}.npz", _env(2, **variables(i, port)), *flags) for i in range(2)
    ]
    _wait_all(started, f"two processes on 127.0.0.1 ({request.param})")
    return [dict(np.load(tmp / f"proc{i}.npz")) for i in range(2)]


NAMES = ("easgd_params", "easgd_records", "easgd_losses", "sde_x", "sde_z")


def test_two_processes_joined(single, procs):
    assert int(single["processes"]) == 1 and int(single["devices"]) == 1
    assert int(single["process_id"]) == -1  # nothing asked for: not initialized
    for i, proc in enumerate(procs):
        assert int(proc["processes"]) == 2 and int(proc["devices"]) == 4
        assert int(proc["process_id"]) == i


@pytest.mark.parametrize("name", NAMES)
def test_two_processes_equal_one(single, procs, name):
    for proc in procs:
        np.testing.assert_allclose(proc[name], single[name], rtol=1e-10, atol=1e-12)


def test_config_from_flags_and_env():
    from experiments.harness.distributed import DistributedConfig, config_from_env

    assert config_from_env(environ={}) is None
    assert config_from_env(num_processes=1, environ={}) is None
    env = {"COUPLED_SGD_NUM_PROCESSES": "4", "COUPLED_SGD_PROCESS_ID": "3"}
    with pytest.raises(ValueError, match="no coordinator address.*JAX_COORDINATOR_ADDRESS"):
        config_from_env(environ=env)
    # The address may be left to JAX (its own variable); flags win over the environment.
    env["JAX_COORDINATOR_ADDRESS"] = "10.0.0.1:1234"
    assert config_from_env(environ=env) == DistributedConfig(None, 4, 3)
    assert config_from_env("h:1", process_id=1, environ=env) == DistributedConfig("h:1", 4, 1)
    # A cluster manager's variables are JAX's business: alone they ask for nothing here.
    slurm = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_JOB_ID": "4097"}
    assert config_from_env(environ=slurm) is None
    with pytest.raises(ValueError, match="no process id"):
        config_from_env("h:1", num_processes=2, environ={})
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\)"):
        config_from_env("h:1", 2, 2, environ={})
    with pytest.raises(ValueError, match="host:port"):
        config_from_env("h", 2, 0, environ={})
    with pytest.raises(ValueError, match="num_processes must be an integer"):
        config_from_env(environ={"COUPLED_SGD_NUM_PROCESSES": "two"})


def test_process_slice():
    from experiments.harness.distributed import process_slice

    assert process_slice(8, 2, 0) == slice(0, 4)
    assert process_slice(8, 2, 1) == slice(4, 8)
    assert process_slice(8) == slice(0, 8)  # a single process owns everything
    with pytest.raises(ValueError, match="9 items cannot be split evenly over 2 processes"):
        process_slice(9, 2, 0)


if __name__ == "__main__":
    np.savez(sys.argv[1], **_compute(cluster="--cluster" in sys.argv[2:]))
