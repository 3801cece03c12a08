"""Discrete multi-agent training: EASGD on N MLPs (MNIST-1D), agent-steps per second.

Contenders, each doing the same work per step (every agent draws a minibatch of `BATCH`
examples with replacement, computes its cross-entropy gradient, and takes the EASGD step
`x_i ← x_i − η(g_i + ρ(x_i − x̃))`, `x̃ ← x̃ + ηρ Σ_i (x_i − x̃)`):

- `jax`: this project — `run_agents(easgd(η, ρ), …, minibatch_oracle(…))`, one compiled
  `lax.scan` over steps, `vmap` over agents, on one device;
- `jax[D dev]`: the same run with the agent axis sharded over the D local devices
  (`algorithms.sharding`), when there are several and D divides N. On a CPU-only machine
  `python -m benchmarks` exposes one CPU device per core (see `benchmarks/__main__.py`), the
  project's documented way to use every core: XLA runs one program's small per-agent
  matmuls on about one core, so D devices run D blocks of agents side by side;
- `torch_loop`: the loop most researchers write — N separate `nn.Module`s and
  `torch.optim.SGD`s, a Python loop over agents, the elastic force added to `.grad`;
- `torch_vmap`: `torch.func` — `vmap(grad(functional_call))` over stacked parameters.

Model: MLP 40 → 100 → 100 → 10 (15,210 parameters), batch 32, η = 0.05, ρ = 1.
JAX is credited with the faster of its one- and D-device runs, as PyTorch is with the
faster of its thread settings. For each N the contenders run in alternation
(`time_alternating`); a JAX run does about `AGENT_STEPS` agent-steps, a PyTorch run about
`TORCH_AGENT_STEPS` (rates are per agent-step, so the counts need not match; PyTorch has no
compile cost to amortize). PyTorch runs with one intra-op thread and with its default; the
speed-up is taken against the faster of the two, because on a shared, loaded machine
PyTorch's thread pool can lose 5-10× to contention.

At N = `GOAL_AGENTS` the JAX runs are also timed without the coupling (`jax_uncoupled`:
`optax.sgd(η)`, the same N agents, minibatches and gradients, no center), a reference
rather than a contender. Sharded, EASGD needs one all-reduce of the parameters every step
(the center's sum over all agents), a barrier at which each device waits for the other;
uncoupled agents never communicate. The two sharding speed-ups side by side show what that
barrier costs on the machine (`sharding_speedup` in the JSON).

It also times the batched matrix products of a step alone (`matmul_kernels`: XLA on one
device against PyTorch's `bmm` at each thread setting, with the cores each keeps busy), which
tells the speed of the matmul kernels at these small shapes apart from the number of cores
each library puts on them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from algorithms import easgd, run_agents
from algorithms.sharding import agent_mesh, shard_agents
from experiments.tasks import MLP, init_stacked, load_mnist1d, minibatch_oracle

from .timing import time_alternating

HIDDEN = (100, 100)
BATCH = 32
LEARNING_RATE, RHO = 0.05, 1.0
AGENTS = (1, 8, 64, 256)
AGENT_STEPS = 4096  # per timed JAX run
TORCH_AGENT_STEPS = 512  # per timed PyTorch run
GOALS = {"torch_loop": 10.0, "torch_vmap": 2.0}  # speed-up of jax at N = GOAL_AGENTS
GOAL_AGENTS = 64
GOAL_REPEATS = 7  # timed runs per contender at GOAL_AGENTS (cheap there; the goals' medians)


def shardable_devices(num_agents: int) -> int:
    """The local device count D if D > 1 divides N, else 1 (the run stays on one device)."""
    devices = jax.local_device_count()
    return devices if devices > 1 and num_agents % devices == 0 else 1


def num_steps_for(num_agents: int, agent_steps: int = AGENT_STEPS) -> int:
    """Steps of a timed run: about `agent_steps / N`, at least 4."""
    return max(agent_steps // num_agents, 4)


def layer_widths(hidden=HIDDEN, inputs: int = 40, classes: int = 10) -> tuple[int, ...]:
    """The MLP's widths `(w_0, …, w_L)`: MNIST-1D's 40 inputs, the hidden layers, 10 classes."""
    return (inputs, *hidden, classes)


def params_per_agent(hidden=HIDDEN, inputs: int = 40, classes: int = 10) -> int:
    widths = layer_widths(hidden, inputs, classes)
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def flops_per_agent_step(hidden=HIDDEN, batch: int = BATCH) -> float:
    """≈ 6 × (matmul parameters) × batch: forward 2, backward 4 FLOPs per weight and example."""
    return 6.0 * params_per_agent(hidden) * batch


def step_products(x, weights, matmul, transpose) -> list:
    """The batched matrix products of one MLP training step, nothing else.

    `x` `(N, B, w_0)`, `weights[l]` `(N, w_l, w_{l+1})`. Forward `h_{l+1} = h_l·W_l` (no
    bias, no activation), then backward from `dy = h_L`: `xᵀ·dy` for every layer and
    `dy·Wᵀ` for every layer but the first, as autodiff computes them. `matmul` and
    `transpose` (of the last two axes) come from the array library. Returns the weight
    gradients, last layer first.
    """
    hs = [x]
    for w in weights:
        hs.append(matmul(hs[-1], w))
    dy, grads = hs[-1], []
    for layer in range(len(weights) - 1, -1, -1):
        grads.append(matmul(transpose(hs[layer]), dy))
        if layer:
            dy = matmul(dy, transpose(weights[layer]))
    return grads


def step_products_flops(hidden=HIDDEN, batch: int = BATCH, inputs: int = 40, classes: int = 10):
    """FLOPs of `step_products` per agent: 2·B·(3 Σ_l w_l w_{l+1} − w_0 w_1)."""
    widths = layer_widths(hidden, inputs, classes)
    forward = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return 2.0 * batch * (3 * forward - widths[0] * widths[1])


def matmul_kernels(
    num_agents: int = GOAL_AGENTS, steps: int = 64, repeats: int = GOAL_REPEATS, torch_threads=()
) -> dict:
    """The products of `steps` training steps of N agents alone (`step_products`): XLA on
    one device against PyTorch's `bmm` (no autograd) with each of `torch_threads` intra-op
    threads (none: PyTorch is not timed).

    Per contender: µs per agent-step, GFLOP/s, and the cores it kept busy (CPU time / wall
    time). Separates the speed of the matmul kernels at these small shapes from the number
    of cores each library puts on them.
    """
    import numpy as np

    widths = layer_widths()
    rng = np.random.default_rng(0)
    weights = [
        (rng.standard_normal((num_agents, a, b)) / np.sqrt(a)).astype(np.float32)
        for a, b in zip(widths[:-1], widths[1:])
    ]
    x0 = rng.standard_normal((num_agents, BATCH, widths[0])).astype(np.float32)

    def feedback(x, grads):
        # The next step's input depends on this step's products, so none is hoisted out of
        # the loop or dropped; the cost is one small element-wise pass.
        return x + 1e-6 * grads[-1][:, : x.shape[1], :1]

    jax_weights = [jnp.asarray(w) for w in weights]

    @jax.jit
    def xla_run(x):
        def body(x, _):
            grads = step_products(x, jax_weights, jnp.matmul, lambda a: jnp.swapaxes(a, 1, 2))
            return feedback(x, grads), None

        return jax.lax.scan(body, x, None, length=steps)[0]

    jax_x0 = jnp.asarray(x0)
    contenders = {"xla[1 dev]": lambda: xla_run(jax_x0)}
    if torch_threads:
        import torch

        weights_t = [torch.from_numpy(w) for w in weights]

        def torch_run():
            x = torch.from_numpy(x0)
            with torch.no_grad():
                for _ in range(steps):
                    grads = step_products(x, weights_t, torch.bmm, lambda a: a.transpose(1, 2))
                    x = feedback(x, grads)
            return x

        for threads in torch_threads:
            contenders[f"torch_bmm[{threads}t]"] = _with_threads(torch, threads, torch_run)
    timings = time_alternating(contenders, repeats)
    agent_steps = num_agents * steps
    return {
        name: {
            "us_per_agent_step": 1e6 * t["median_s"] / agent_steps,
            "gflop_per_s": step_products_flops() * agent_steps / t["median_s"] / 1e9,
            "cores_busy": t["median_cpu_s"] / t["median_s"],
        }
        for name, t in timings.items()
    }


def jax_training(
    num_agents: int,
    num_steps: int,
    hidden=HIDDEN,
    batch: int = BATCH,
    devices: int = 1,
    coupled: bool = True,
):
    """A zero-argument callable running `num_steps` EASGD steps of N agents (compiled once).

    With `devices` D > 1 the agent axis is sharded over the first D local devices (N must
    be a multiple of D). `coupled=False` runs plain SGD (`optax.sgd(η)`) instead: the same
    agents and gradients, no elastic force and no center. Returns the final mean loss (a
    device array) so the timing blocks on the whole run.
    """
    data = load_mnist1d()
    model = MLP(hidden=hidden, num_classes=data.num_classes)
    oracle = minibatch_oracle(model, data.x_train, data.y_train, batch)
    params = init_stacked(model, jax.random.key(0), num_agents, data.x_train[:2], same_init=True)
    if devices > 1:
        params = shard_agents(params, agent_mesh(devices, jax.local_devices()))
    optimizer = easgd(LEARNING_RATE, RHO) if coupled else optax.sgd(LEARNING_RATE)

    # One outer jit: `run_agents` builds its jitted loop per call, so calling it directly
    # would retrace and recompile on every timed repetition.
    @jax.jit
    def run(params, key):
        result = run_agents(
            optimizer, params, oracle, num_steps=num_steps, key=key, record_every=num_steps,
            metrics_fn=lambda p, s, losses: {"loss": jnp.mean(losses)},
        )  # fmt: skip
        return result.metrics["loss"][-1]

    key = jax.random.key(1)

    def call():
        return run(params, key)

    call.compiled_text = lambda: run.lower(params, key).compile().as_text()  # for profiling
    return call


def uncoupled_label(label: str) -> str:
    """The label of the uncoupled reference run of the EASGD run `label` (`jax[2 dev]` ->
    `jax_uncoupled[2 dev]`)."""
    return label.replace("jax", "jax_uncoupled", 1)


def sharding_speedups(
    rates: dict[str, float], devices: dict[str, int], uncoupled: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Rate on D devices / rate on one, for EASGD and for the uncoupled reference.

    `rates` holds the EASGD runs (`jax`, `jax[D dev]`), `devices` their device counts and
    `uncoupled` the reference runs under their `uncoupled_label`s. Returns
    `{"D": {"easgd": …, "uncoupled": …}}` for every D > 1 timed both ways.
    """
    out = {}
    for label, d in devices.items():
        ref, one = uncoupled_label(label), uncoupled_label("jax")
        if d > 1 and ref in uncoupled and one in uncoupled:
            out[str(d)] = {
                "easgd": rates[label] / rates["jax"],
                "uncoupled": uncoupled[ref] / uncoupled[one],
            }
    return out


def _torch_data(torch):
    data = load_mnist1d()
    return torch.from_numpy(data.x_train), torch.from_numpy(data.y_train).long()


def _torch_mlp(torch, hidden=HIDDEN):
    layers, width = [], 40
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def torch_loop_training(num_agents: int, num_steps: int, hidden=HIDDEN, batch: int = BATCH):
    """PyTorch, a Python loop over N models and N `torch.optim.SGD` optimizers."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    x, y = _torch_data(torch)
    first = _torch_mlp(torch, hidden)
    models = [_torch_mlp(torch, hidden) for _ in range(num_agents)]
    for m in models:
        m.load_state_dict(first.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=LEARNING_RATE) for m in models]
    center = [p.detach().clone() for p in first.parameters()]

    def run():
        for _ in range(num_steps):
            pulls = [torch.zeros_like(c) for c in center]
            for model, opt in zip(models, opts):
                idx = torch.randint(0, len(y), (batch,))
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                with torch.no_grad():
                    for p, c, pull in zip(model.parameters(), center, pulls):
                        diff = p - c
                        p.grad.add_(diff, alpha=RHO)
                        pull.add_(diff)
                opt.step()
            with torch.no_grad():
                for c, pull in zip(center, pulls):
                    c.add_(pull, alpha=LEARNING_RATE * RHO)
        return loss.item()

    return run


def torch_vmap_training(num_agents: int, num_steps: int, hidden=HIDDEN, batch: int = BATCH):
    """PyTorch `torch.func`: `vmap(grad(functional_call))` over stacked parameters."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad_and_value, vmap

    torch.manual_seed(0)
    x, y = _torch_data(torch)
    base = _torch_mlp(torch, hidden)
    params = {
        k: v.detach().unsqueeze(0).repeat(num_agents, *([1] * v.ndim)).contiguous()
        for k, v in base.named_parameters()
    }
    center = {k: v.mean(0) for k, v in params.items()}

    def loss_fn(p, xb, yb):
        return F.cross_entropy(functional_call(base, p, (xb,)), yb)

    grads_fn = vmap(grad_and_value(loss_fn))

    def run():
        with torch.no_grad():
            for _ in range(num_steps):
                idx = torch.randint(0, len(y), (num_agents, batch))
                grads, losses = grads_fn(params, x[idx], y[idx])
                for k in params:
                    diff = params[k] - center[k]
                    center[k].add_(diff.sum(0), alpha=LEARNING_RATE * RHO)
                    params[k].sub_(grads[k] + RHO * diff, alpha=LEARNING_RATE)
        return losses.mean().item()

    return run


def torch_status() -> str | None:
    """None if PyTorch can be imported, else why the PyTorch contenders are skipped."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return "skipped: torch not installed (pip install -e '.[bench]')"
    return None


def _with_threads(torch, threads: int, fn):
    def run():
        torch.set_num_threads(threads)
        return fn()

    return run


def main(
    repeats: int = 3,
    agents=AGENTS,
    agent_steps: int = AGENT_STEPS,
    torch_agent_steps: int = TORCH_AGENT_STEPS,
) -> dict:
    skipped = torch_status()
    if skipped is None:
        import torch

        default_threads = torch.get_num_threads()
        thread_options = sorted({1, default_threads})
    per_n = {}
    for n in agents:
        steps = {"jax": num_steps_for(n, agent_steps)}
        contenders = {"jax": jax_training(n, steps["jax"])}
        jax_devices = {"jax": 1}
        devices = shardable_devices(n)
        if devices > 1:
            label = f"jax[{devices} dev]"
            steps[label] = steps["jax"]
            contenders[label] = jax_training(n, steps[label], devices=devices)
            jax_devices[label] = devices
        uncoupled = []  # reference runs, not contenders (see the module docstring)
        if n == GOAL_AGENTS:
            for label, d in list(jax_devices.items()):
                ref = uncoupled_label(label)
                steps[ref] = steps[label]
                contenders[ref] = jax_training(n, steps[ref], devices=d, coupled=False)
                uncoupled.append(ref)
        if skipped is None:
            torch_steps = max(torch_agent_steps // n, 2)
            for threads in thread_options:
                for name, build in (
                    ("torch_loop", torch_loop_training),
                    ("torch_vmap", torch_vmap_training),
                ):
                    label = f"{name}[{threads}t]"
                    steps[label] = torch_steps
                    contenders[label] = _with_threads(torch, threads, build(n, torch_steps))
        timings = time_alternating(
            contenders, max(repeats, GOAL_REPEATS) if n == GOAL_AGENTS else repeats
        )
        if skipped is None:
            torch.set_num_threads(default_threads)
        rates = {k: n * steps[k] / v["median_s"] for k, v in timings.items()}
        reference = {k: rates.pop(k) for k in uncoupled}
        jax_rates = {k: rates[k] for k in jax_devices}
        best = {"jax": max(jax_rates.values())}
        for name in GOALS if skipped is None else ():
            best[name] = max(r for k, r in rates.items() if k.startswith(name + "["))
        per_n[str(n)] = {
            "steps": steps,
            "timings": timings,
            "agent_steps_per_s": rates,
            "best_agent_steps_per_s": best,
            "best_jax": max(jax_rates, key=jax_rates.get),
            "devices": jax_devices,  # each JAX contender's device count
            "speedup_jax_over": {k: best["jax"] / r for k, r in best.items() if k != "jax"},
        }
        # CPU time (all threads) per agent-step: time a run spends waiting while it keeps
        # a core busy shows here and not in its rate.
        per_n[str(n)]["jax_cpu_us_per_agent_step"] = {
            k: 1e6 * timings[k]["median_cpu_s"] / (n * steps[k]) for k in (*jax_devices, *uncoupled)
        }
        if reference:
            per_n[str(n)]["uncoupled_agent_steps_per_s"] = reference
            per_n[str(n)]["sharding_speedup"] = sharding_speedups(rates, jax_devices, reference)
        line = ", ".join(f"{k} {r:,.0f}" for k, r in {**rates, **reference}.items())
        print(f"  training N={n} (agent-steps/s): {line}", flush=True)
    kernels = matmul_kernels(torch_threads=thread_options if skipped is None else ())
    if skipped is None:
        torch.set_num_threads(default_threads)
    line = ", ".join(f"{k} {v['gflop_per_s']:.0f} GFLOP/s" for k, v in kernels.items())
    print(f"  the step's products alone, N={GOAL_AGENTS}: {line}", flush=True)
    result = {
        "benchmark": "training_easgd_mlp_mnist1d",
        "model": f"MLP{layer_widths()}, {params_per_agent()} params, batch {BATCH}",
        "agents": list(agents),
        "per_agents": per_n,
        "goal_agents": GOAL_AGENTS,
        "goals_speedup_min": GOALS,
        "matmul_kernels": kernels,
        "step_products_flops_per_agent": step_products_flops(),
    }
    if skipped is not None:
        result["torch"] = skipped
        result["goal_met"] = {k: skipped for k in GOALS}
    else:
        result["torch"] = f"torch {torch.__version__}, threads {thread_options} (best used)"
        at_goal = per_n.get(str(GOAL_AGENTS))
        result["goal_met"] = {
            k: (at_goal["speedup_jax_over"][k] >= g) if at_goal else "not measured"
            for k, g in GOALS.items()
        }
    return result
