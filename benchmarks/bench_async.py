"""Cost per applied gradient of the asynchronous worker pool vs plain sequential SGD.

Both run the same gradient oracle (an MLP on MNIST-1D, minibatch 64) inside one jitted
`lax.scan`; the pool (`algorithms.asynchrony.run_pool`, W workers, c = 1, exponential compute
times, constant server rate) additionally selects the next arrival on the virtual clock,
gathers its snapshot and scatters the new one back. A third contender separates the cost of
the snapshots from the rest of the pool: sequential SGD that evaluates each gradient at a
stored copy, reading row k mod W of a `(W, params)` buffer and writing the new parameters
back into it — the memory traffic that W snapshots add to any pool, with none of its
bookkeeping (arrival order, staleness, per-worker keys, compute times). Timings alternate
between the three (`benchmarks.timing.time_alternating`), `--reps` times after a warm-up.
Each ratio is the median over repetitions of the ratio of two runs of the same repetition
(run one after the other, so a slow spell of a shared machine affects both); the
per-gradient times are the medians. Prints JSON to stdout: `{"ratio":
pool_seconds_per_gradient / sgd_seconds_per_gradient, "snapshot_ratio":
snapshot_sgd_seconds_per_gradient / sgd_seconds_per_gradient, ...}`.

Usage: `python -m benchmarks.bench_async [--steps 1000] [--workers 16] [--reps 15]`.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from algorithms.asynchrony import compute_time, constant_rate, run_pool
from experiments.tasks import MLP, init_stacked, load_mnist1d, minibatch_grad_fn

from .timing import time_alternating

GOAL_RATIO_MAX = 1.05  # pool / sequential, per applied gradient


def _setup(batch_size: int, hidden: tuple[int, ...]):
    data = load_mnist1d()
    model = MLP(hidden=hidden, num_classes=data.num_classes)
    grad_fn = minibatch_grad_fn(model, data.x_train, data.y_train, batch_size)
    params = jax.tree.map(
        lambda p: p[0], init_stacked(model, jax.random.key(0), 1, data.x_train[:2])
    )
    return grad_fn, params


def main(argv: list[str] | tuple[str, ...] = ()) -> dict:
    """Run the comparison with the options in `argv` (defaults when empty, as `make bench`
    calls it) and return the result printed as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="gradients per timed run")
    parser.add_argument("--workers", type=int, default=16, help="pool size W")
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions of each")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, nargs="*", default=[128, 128])
    args = parser.parse_args(argv)
    grad_fn, params = _setup(args.batch_size, tuple(args.hidden))
    lr = 0.05

    @jax.jit
    def sequential(key):
        def step(x, k):
            loss, g = grad_fn(x, jax.random.fold_in(key, k))
            return jax.tree.map(lambda p, d: p - lr * d, x, g), loss

        return jax.lax.scan(step, params, jnp.arange(args.steps))

    @jax.jit
    def snapshot_sgd(key):
        def step(carry, k):
            x, stored = carry
            row = k % args.workers
            at = jax.tree.map(
                lambda s: jax.lax.dynamic_index_in_dim(s, row, keepdims=False), stored
            )
            loss, g = grad_fn(at, jax.random.fold_in(key, k))
            x = jax.tree.map(lambda p, d: p - lr * d, x, g)
            stored = jax.tree.map(
                lambda s, p: jax.lax.dynamic_update_index_in_dim(s, p, row, 0), stored, x
            )
            return (x, stored), loss

        stored = jax.tree.map(lambda p: jnp.broadcast_to(p, (args.workers,) + p.shape), params)
        return jax.lax.scan(step, (params, stored), jnp.arange(args.steps))

    times = compute_time("exponential", args.workers)

    @jax.jit
    def pool(key):
        res = run_pool(
            grad_fn, constant_rate(lr), params, key, times=times, num_arrivals=1,
            num_steps=args.steps,
        )  # fmt: skip
        return res.params, res.trace.loss

    key = jax.random.key(100)
    runs = time_alternating(
        {
            "sequential": lambda: sequential(key),
            "snapshot": lambda: snapshot_sgd(key),
            "pool": lambda: pool(key),
        },
        args.reps,
    )
    seq, snap, pl = (runs[n]["median_s"] / args.steps for n in ("sequential", "snapshot", "pool"))
    baseline = np.asarray(runs["sequential"]["all_s"])
    snapshot_ratio, ratio = (
        float(np.median(np.asarray(runs[n]["all_s"]) / baseline)) for n in ("snapshot", "pool")
    )
    result = {
        "benchmark": "async_pool_vs_sequential_sgd",
        "model": f"MLP{tuple(args.hidden)} on MNIST-1D, batch {args.batch_size}",
        "params": int(sum(p.size for p in jax.tree.leaves(params))),
        "workers": args.workers,
        "steps": args.steps,
        "reps": args.reps,
        "device": str(jax.devices()[0]),
        "sequential_us_per_gradient": seq * 1e6,
        "snapshot_us_per_gradient": snap * 1e6,
        "pool_us_per_gradient": pl * 1e6,
        "snapshot_ratio": snapshot_ratio,
        "ratio": ratio,
        "goal_ratio_max": GOAL_RATIO_MAX,
        "goal_met": bool(ratio <= GOAL_RATIO_MAX),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
