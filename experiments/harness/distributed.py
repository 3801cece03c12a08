"""Multi-host runs: `jax.distributed.initialize` from flags or the environment, and which
agents each process owns.

One process per host (or per GPU) runs the same program. After `initialize()`,
`jax.devices()` lists the devices of all processes, so `algorithms.sharding.agent_mesh()`
spans every host, and a jitted step over agent-sharded arrays runs everywhere with XLA
collectives (NCCL on GPUs, Gloo on CPUs) carrying the cross-agent terms.

Where the settings come from, first match wins:

1. the arguments (e.g. from `--coordinator`, `--num-processes`, `--process-id`);
2. `COUPLED_SGD_COORDINATOR` (`host:port`), `COUPLED_SGD_NUM_PROCESSES`,
   `COUPLED_SGD_PROCESS_ID`;
3. SLURM: `SLURM_NTASKS`, `SLURM_PROCID`, and the first host of `SLURM_JOB_NODELIST` with port
   `COUPLED_SGD_COORDINATOR_PORT` (default: 61440 + job id mod 4096, as JAX chooses).

A single process (no settings found, or one process) needs no initialization and runs as is.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from typing import NamedTuple

__all__ = [
    "DistributedConfig",
    "add_arguments",
    "config_from_env",
    "first_slurm_host",
    "initialize",
    "process_slice",
]

ENV_PREFIX = "COUPLED_SGD_"


class DistributedConfig(NamedTuple):
    """Where the coordinator listens (`host:port`), how many processes, and which one this is."""

    coordinator_address: str
    num_processes: int
    process_id: int


def first_slurm_host(nodelist: str) -> str:
    """The first host name of a SLURM node list (`node[003-007,9],gpu1` -> `node003`)."""
    match = re.match(r"([^,\[]+)(?:\[([^\],\-]+))?", nodelist.strip())
    if match is None:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    prefix, first_index = match.groups()
    return prefix + (first_index or "")


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
    """The distributed settings from arguments, `COUPLED_SGD_*` or SLURM variables.

    Returns None when nothing asks for more than one process. Raises a ValueError naming
    what is missing when the settings are partial (e.g. a process count but no coordinator).
    """
    env = os.environ if environ is None else environ
    address = coordinator_address or env.get(ENV_PREFIX + "COORDINATOR")
    count = num_processes if num_processes is not None else env.get(ENV_PREFIX + "NUM_PROCESSES")
    index = process_id if process_id is not None else env.get(ENV_PREFIX + "PROCESS_ID")
    if "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
        count = env["SLURM_NTASKS"] if count is None else count
        index = env["SLURM_PROCID"] if index is None else index
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_STEP_NODELIST")
        if address is None and nodelist:
            default_port = (
                65535 - 2**12 + 1 + _int("SLURM_JOB_ID", env.get("SLURM_JOB_ID", 0)) % 2**12
            )
            port = env.get(ENV_PREFIX + "COORDINATOR_PORT", default_port)
            address = f"{first_slurm_host(nodelist)}:{_int('coordinator port', port)}"
    if count is None and address is None and index is None:
        return None
    count = 1 if count is None else _int("num_processes", count)
    if count < 1:
        raise ValueError(f"num_processes must be >= 1, got {count}")
    if count == 1:
        return None
    if address is None:
        raise ValueError(
            f"{count} processes requested but no coordinator address: pass --coordinator "
            f"host:port or set {ENV_PREFIX}COORDINATOR"
        )
    if index is None:
        raise ValueError(
            f"{count} processes requested but no process id: pass --process-id or set "
            f"{ENV_PREFIX}PROCESS_ID"
        )
    index = _int("process_id", index)
    if not 0 <= index < count:
        raise ValueError(f"process_id must be in [0, {count}), got {index}")
    if ":" not in address:
        raise ValueError(f"coordinator address must be host:port, got {address!r}")
    return DistributedConfig(address, count, index)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 300,
) -> DistributedConfig | None:
    """Join a multi-process JAX run (`jax.distributed.initialize`) if one is configured.

    Call it first, before any other JAX operation. On CPU, cross-process collectives use Gloo
    over TCP (`jax_cpu_collectives_implementation`, JAX's default); GPUs use NCCL.

    Args:
      coordinator_address: `host:port` of process 0's coordinator service.
      num_processes: total number of processes P >= 1.
      process_id: this process's index in `[0, P)`.
      timeout_s: seconds to wait for all processes to join.

    Returns:
      The settings used, or None for a single-process run (nothing to initialize).
    """
    config = config_from_env(coordinator_address, num_processes, process_id)
    if config is None:
        return None
    import jax

    jax.distributed.initialize(
        coordinator_address=config.coordinator_address,
        num_processes=config.num_processes,
        process_id=config.process_id,
        initialization_timeout=int(timeout_s),
    )
    return config


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
    """Add `--devices`, `--coordinator`, `--num-processes`, `--process-id` to a CLI."""
    group = parser.add_argument_group("devices and hosts")
    group.add_argument(
        "--devices", type=int, default=None, help="devices for the agent axis (default: all)"
    )
    group.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-host)")
    group.add_argument("--num-processes", type=int, default=None, help="processes in the run")
    group.add_argument("--process-id", type=int, default=None, help="this process's index")
    return parser
