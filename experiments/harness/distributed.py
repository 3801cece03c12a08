"""Multi-host runs: when to call `jax.distributed.initialize`, and which agents each process
owns.

One process per host (or per GPU) runs the same program. After `initialize()`,
`jax.devices()` lists the devices of all processes, so `algorithms.sharding.agent_mesh()`
spans every host, and a jitted step over agent-sharded arrays runs everywhere with XLA
collectives (NCCL on GPUs, Gloo on CPUs) carrying the cross-agent terms.

Who reads what (docs/scaling.md has the full table):

- this module reads only its arguments (the CLI's `--coordinator`, `--num-processes`,
  `--process-id`, `--cluster`) and `COUPLED_SGD_NUM_PROCESSES` / `COUPLED_SGD_PROCESS_ID`,
  which let hand-started processes join without a cluster manager (JAX has no variables for
  these two); it decides whether a multi-process run was asked for and checks the settings;
- `jax.distributed.initialize` fills in everything not given: `JAX_COORDINATOR_ADDRESS`, and
  with `cluster=True` the settings of SLURM, Open MPI, Kubernetes or Cloud TPU, which it
  detects itself (this module never parses a cluster manager's variables).

A single process (nothing asked for, or one process) needs no initialization and runs as is.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import NamedTuple

__all__ = [
    "DistributedConfig",
    "add_arguments",
    "config_from_env",
    "initialize",
    "process_slice",
]

ENV_PREFIX = "COUPLED_SGD_"
JAX_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # read by jax.distributed.initialize itself


class DistributedConfig(NamedTuple):
    """The explicit settings of a multi-process run (None: left to `jax.distributed`).

    `coordinator_address` is `host:port` of process 0's coordinator service.
    """

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None


def _int(name: str, value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be an integer, got {value!r}") from e


def config_from_env(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> DistributedConfig | None:
    """The explicitly requested multi-process settings: arguments, then `COUPLED_SGD_*`.

    Returns None when nothing asks for more than one process. Raises a ValueError naming
    what is missing or wrong when the settings are partial or invalid (e.g. two processes
    but no coordinator address in the arguments or in `JAX_COORDINATOR_ADDRESS`). Cluster
    managers' variables are not read here (see `initialize(cluster=True)`).
    """
    env = os.environ if environ is None else environ
    count = num_processes if num_processes is not None else env.get(ENV_PREFIX + "NUM_PROCESSES")
    index = process_id if process_id is not None else env.get(ENV_PREFIX + "PROCESS_ID")
    if count is None and coordinator_address is None and index is None:
        return None
    count = 1 if count is None else _int("num_processes", count)
    if count < 1:
        raise ValueError(f"num_processes must be >= 1, got {count}")
    if count == 1:
        return None
    if coordinator_address is None and JAX_COORDINATOR not in env:
        raise ValueError(
            f"{count} processes requested but no coordinator address: pass --coordinator "
            f"host:port or set {JAX_COORDINATOR}"
        )
    if index is None:
        raise ValueError(
            f"{count} processes requested but no process id: pass --process-id or set "
            f"{ENV_PREFIX}PROCESS_ID"
        )
    index = _int("process_id", index)
    if not 0 <= index < count:
        raise ValueError(f"process_id must be in [0, {count}), got {index}")
    if coordinator_address is not None and ":" not in coordinator_address:
        raise ValueError(f"coordinator address must be host:port, got {coordinator_address!r}")
    return DistributedConfig(coordinator_address, count, index)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cluster: bool = False,
    timeout_s: int = 300,
) -> DistributedConfig | None:
    """Join a multi-process JAX run (`jax.distributed.initialize`) if one is asked for.

    Call it first, before any other JAX operation. On CPU, cross-process collectives use Gloo
    over TCP (`jax_cpu_collectives_implementation`, JAX's default); GPUs use NCCL.

    Args:
      coordinator_address: `host:port` of process 0's coordinator service.
      num_processes: total number of processes P >= 1.
      process_id: this process's index in `[0, P)`.
      cluster: the processes were started by a cluster manager that JAX detects (SLURM,
        Open MPI, Kubernetes, Cloud TPU): initialize even without explicit settings, and let
        JAX read the rest from the manager's environment.
      timeout_s: seconds to wait for all processes to join.

    Returns:
      The settings as JAX used them (`jax.process_count()`, `jax.process_index()`), or None
      for a single-process run (nothing to initialize).
    """
    config = config_from_env(coordinator_address, num_processes, process_id)
    if config is None and not cluster:
        return None
    import jax

    given = config or DistributedConfig(coordinator_address, num_processes, process_id)
    jax.distributed.initialize(
        coordinator_address=given.coordinator_address,
        num_processes=given.num_processes,
        process_id=given.process_id,
        initialization_timeout=int(timeout_s),
    )
    address = given.coordinator_address or os.environ.get(JAX_COORDINATOR)
    return DistributedConfig(address, jax.process_count(), jax.process_index())


def process_slice(num_items: int, num_processes: int | None = None, process_id: int | None = None):
    """The contiguous block of `num_items` (agents, examples) that this process owns.

    Process p of P owns `slice(p·n/P, (p+1)·n/P)`: with `jax.devices()` ordered by process
    (as JAX orders them), this is exactly the agents that `NamedSharding(mesh, P("agents"))`
    places on p's devices, so each process loads only its own agents' data and builds its
    part with `algorithms.sharding.agents_from_process_local`.

    Args:
      num_items: n, a multiple of P.
      num_processes: P; default `jax.process_count()`.
      process_id: p; default `jax.process_index()`.
    """
    import jax

    count = jax.process_count() if num_processes is None else int(num_processes)
    index = jax.process_index() if process_id is None else int(process_id)
    if num_items % count:
        raise ValueError(
            f"{num_items} items cannot be split evenly over {count} processes; "
            "choose a multiple of the process count"
        )
    per = num_items // count
    return slice(index * per, (index + 1) * per)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--devices`, `--coordinator`, `--num-processes`, `--process-id`, `--cluster`."""
    group = parser.add_argument_group("devices and hosts")
    group.add_argument(
        "--devices", type=int, default=None, help="devices for the agent axis (default: all)"
    )
    group.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-host)")
    group.add_argument("--num-processes", type=int, default=None, help="processes in the run")
    group.add_argument("--process-id", type=int, default=None, help="this process's index")
    group.add_argument(
        "--cluster",
        action="store_true",
        help="started by SLURM, Open MPI, Kubernetes or on Cloud TPU: JAX reads the settings",
    )
    return parser
