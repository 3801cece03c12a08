"""The agent axis across devices: a `jax.sharding.Mesh` with one axis, `"agents"`.

Every per-agent leaf has the agent axis N first (DESIGN.md), so scaling out is a placement,
not a rewrite: put each such leaf's axis 0 on the mesh axis `"agents"`
(`NamedSharding(mesh, P("agents"))`), replicate the rest (a quorum variable z, a step count,
a PRNG key), and let `jit` propagate the shardings (GSPMD). Per-agent work (`vmap` over
agents) then runs where its agents live, and the collective terms — reductions over axis 0
such as `agent_mean` — become XLA all-reduces. Nothing in the runner or the solver changes:

    mesh = agent_mesh()                      # all devices (of all processes)
    params = shard_agents(params, mesh)      # leaves (N, ...) split N / D per device
    result = run_agents(opt, params, sharded_oracle(oracle, mesh), num_steps=..., key=key)

`sharded_oracle` pins the parameters and gradients to the agent sharding at every step of
the `lax.scan`, so the partitioner cannot choose to gather the agents onto one device.

Random numbers do not depend on the layout (`jax_threefry_partitionable`, on by default), so
a run on D devices equals the run on one device to floating-point reassociation of the
cross-agent sums.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dynamics.types import Oracle, PyTree

__all__ = [
    "AGENT_AXIS",
    "agent_mesh",
    "agent_sharding",
    "replicated",
    "check_divisible",
    "shard_agents",
    "replicate",
    "agents_from_process_local",
    "constrain_agents",
    "sharded_oracle",
    "gather",
    "use_agent_mesh",
    "current_agent_mesh",
]

AGENT_AXIS = "agents"
"""Name of the mesh axis that carries the agent (worker, replica) axis."""


def agent_mesh(num_devices: int | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh `("agents",)` over the first `num_devices` devices.

    Under multi-process JAX (`experiments.harness.distributed.initialize`), `jax.devices()`
    lists the
    devices of every process, so the default mesh spans all hosts.

    Args:
      num_devices: D >= 1 devices to use; None uses all of `devices`.
      devices: the devices to choose from; default `jax.devices()` (global, all processes).

    Returns:
      A `Mesh` of shape `{"agents": D}`.
    """
    available = list(jax.devices() if devices is None else devices)
    if num_devices is None:
        num_devices = len(available)
    if isinstance(num_devices, bool) or int(num_devices) != num_devices or num_devices < 1:
        raise ValueError(f"num_devices must be an integer >= 1, got {num_devices!r}")
    num_devices = int(num_devices)
    if num_devices > len(available):
        raise ValueError(
            f"requested {num_devices} devices but only {len(available)} are available "
            f"({available[0].platform}); on CPU, start Python with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices}"
        )
    return Mesh(np.asarray(available[:num_devices]), (AGENT_AXIS,))


def agent_sharding(mesh: Mesh) -> NamedSharding:
    """`NamedSharding(mesh, P("agents"))`: axis 0 split over the mesh, other axes whole."""
    return NamedSharding(mesh, P(AGENT_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """`NamedSharding(mesh, P())`: a full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def check_divisible(num_agents: int, mesh: Mesh) -> None:
    """Raise a ValueError naming both numbers unless N is a multiple of the device count."""
    num_devices = mesh.shape[AGENT_AXIS]
    if num_agents % num_devices:
        raise ValueError(
            f"the number of agents N={num_agents} is not divisible by the number of devices "
            f"D={num_devices}; choose N as a multiple of D, or use agent_mesh(num_devices=...) "
            "(the experiments CLI: --devices) with a divisor of N; agents are never padded "
            "and a run is never silently left on one device"
        )


def _leading_sizes(tree: PyTree) -> set[int]:
    return {np.shape(leaf)[0] for leaf in jax.tree.leaves(tree) if np.ndim(leaf) >= 1}


def _num_agents(tree: PyTree, num_agents: int | None) -> int:
    if num_agents is not None:
        return int(num_agents)
    sizes = _leading_sizes(tree)
    if len(sizes) != 1:
        raise ValueError(
            f"cannot infer the agent axis: leaves have leading sizes {sorted(sizes)}; pass "
            "num_agents=N to shard only the leaves whose leading axis has size N"
        )
    return sizes.pop()


def _shardings(tree: PyTree, mesh: Mesh, num_agents: int | None) -> PyTree:
    """The sharding of each leaf: agent sharding if its axis 0 has size N, else replicated."""
    n = _num_agents(tree, num_agents)
    check_divisible(n, mesh)
    split, whole = agent_sharding(mesh), replicated(mesh)
    return jax.tree.map(
        lambda leaf: split if np.ndim(leaf) >= 1 and np.shape(leaf)[0] == n else whole, tree
    )


def _place(leaf, sharding: NamedSharding) -> jax.Array:
    global_input = isinstance(leaf, jax.Array) and not leaf.is_fully_addressable
    if global_input or sharding.is_fully_addressable:
        return jax.device_put(leaf, sharding)
    # Multi-process: every process holds the same host value and supplies its own shards.
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        raw = _place(jax.random.key_data(leaf), sharding)  # typed keys travel as their data
        return jax.random.wrap_key_data(raw, impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_agents(tree: PyTree, mesh: Mesh, *, num_agents: int | None = None) -> PyTree:
    """Place every leaf with agent axis N on `P("agents")`, every other leaf replicated.

    Args:
      tree: a pytree of arrays, e.g. stacked parameters (leaves `(N, ...)`), an optimizer or
        coupling state (a quorum variable `(dim,)` and a count `()` are replicated).
      mesh: from `agent_mesh`.
      num_agents: N; leaves whose axis 0 has size N are split. Default: the common leading
        size of all leaves with at least one axis (an error if they differ).

    Returns:
      The same pytree of `jax.Array`s, agent leaves split `N / D` per device. In multi-process
      runs every process must pass the same values (use `agents_from_process_local` when each
      process holds only its own agents).
    """
    return jax.tree.map(_place, tree, _shardings(tree, mesh, num_agents))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """A full copy of every leaf on every device of `mesh` (e.g. a PRNG key, θ_0)."""
    return jax.tree.map(lambda leaf: _place(leaf, replicated(mesh)), tree)


def agents_from_process_local(local_tree: PyTree, mesh: Mesh, num_agents: int) -> PyTree:
    """Assemble global agent-sharded arrays from each process's own agents.

    Process p passes the agents `experiments.harness.distributed.process_slice(N)` (leaves
    `(N / P, ...)`, P processes); the result has leaves `(N, ...)` sharded on `"agents"`,
    without any process ever holding all N. Per-process data loading feeds this.
    """
    check_divisible(num_agents, mesh)
    sharding = agent_sharding(mesh)
    return jax.tree.map(
        lambda leaf: jax.make_array_from_process_local_data(
            sharding, np.asarray(leaf), (num_agents,) + np.shape(leaf)[1:]
        ),
        local_tree,
    )


def constrain_agents(tree: PyTree, mesh: Mesh, *, num_agents: int | None = None) -> PyTree:
    """`with_sharding_constraint` to the agent layout, for use inside `jit` (traced values)."""
    return jax.lax.with_sharding_constraint(tree, _shardings(tree, mesh, num_agents))


def sharded_oracle(oracle: Oracle, mesh: Mesh) -> Oracle:
    """The oracle with its parameters, losses `(N,)` and gradients pinned to `P("agents")`.

    The runner calls the oracle once per step inside its `lax.scan`; these constraints keep
    the scan carry split over the agents, so per-agent gradients are computed where the
    agents live and only the collective terms communicate.
    """

    def constrained(params, key, step):
        params = constrain_agents(params, mesh)
        losses, grads = oracle(params, key, step)
        n = losses.shape[0]
        return constrain_agents(losses, mesh, num_agents=n), constrain_agents(
            grads, mesh, num_agents=n
        )

    return constrained


def gather(tree: PyTree) -> PyTree:
    """NumPy copies of (possibly multi-process) global arrays, identical on every process."""

    def one(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree.map(one, tree)


_CURRENT_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar(
    "agent_mesh", default=None
)


@contextlib.contextmanager
def use_agent_mesh(mesh: Mesh) -> Iterator[Mesh]:
    """Within this block, `run_agents` calls without `mesh=` place the agent axis on `mesh`.

    Every such call (outside `jit`/`vmap`) needs N divisible by the mesh's device count and
    raises a ValueError naming both otherwise. The experiments CLI wraps each run in it
    (`--devices`). Unlike `jax.set_mesh`, it does not change how JAX traces anything; only
    the runner reads it.
    """
    token = _CURRENT_MESH.set(mesh)
    try:
        yield mesh
    finally:
        _CURRENT_MESH.reset(token)


def current_agent_mesh() -> Mesh | None:
    """The mesh set by the innermost `use_agent_mesh`, or None."""
    return _CURRENT_MESH.get()
