"""Figure and Markdown table of the benchmark results.

Reads `benchmarks/results/*.json` (written by `python -m benchmarks`) and writes
`benchmarks/results/benchmarks.png` (one panel per benchmark family) and
`benchmarks/results/table.md` (one row per ratio, with its goal and whether it is met).
Missing benchmarks are left out; `python -m benchmarks.plot` prints the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def load_results(results_dir: Path = RESULTS) -> dict[str, dict]:
    """Every `NAME.json` in the results folder, keyed by NAME."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(results_dir).glob("*.json"))}


def _met(value) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "**no**"
    return str(value) if value is not None else "—"


def _faster(speedup: float) -> str:
    """A speed-up as the table writes it: "2.3× faster", or "1.2× slower" below 1 (two
    decimals within 10 % of 1, where one would round to "1.0×")."""
    ratio, word = (speedup, "faster") if speedup >= 1 else (1 / speedup, "slower")
    return f"{ratio:.2f}× {word}" if ratio < 1.1 else f"{ratio:.1f}× {word}"


def table_rows(results: dict[str, dict]) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, comparison, measured, goal, met) rows."""
    rows = []
    training = results.get("bench_training")
    if training:
        goals, met = training["goals_speedup_min"], training["goal_met"]
        for n, entry in training["per_agents"].items():
            best = entry.get("best_jax", "jax")
            jax_rate = entry["agent_steps_per_s"][best]
            devices = entry["devices"][best]
            label = "one device" if devices == 1 else f"{devices} devices"
            for peer, speedup in entry.get("speedup_jax_over", {}).items():
                at_goal = int(n) == training["goal_agents"]
                rows.append(
                    (
                        f"1. training, N = {n}",
                        f"JAX ({label}, {jax_rate:,.0f} agent-steps/s) vs {peer}",
                        _faster(speedup),
                        f"≥ {goals[peer]}×" if at_goal else "—",
                        _met(met[peer]) if at_goal else "—",
                    )
                )
        if training.get("torch", "").startswith("skipped"):
            rows.append(("1. training", "PyTorch peers", training["torch"], "—", "—"))
    rng = results.get("bench_rng")
    if rng:
        rows.append(
            (
                f"2. random numbers, {rng['numbers_per_step']:,} per step",
                "threefry, `dynamics.rng`'s unrolled lowering vs JAX's default CPU lowering",
                f"bits {rng['speedup_bits']:.1f}×, normals {rng['speedup_normals']:.1f}× faster",
                "the same numbers",
                _met(rng["same_numbers"]),
            )
        )
    sde = results.get("bench_sde")
    if sde:
        goal = sde.get("goal_ratio_max", 1.3)
        rows.append(
            (
                "2. SDE, N=256, d=100, 10⁴ steps",
                "`dynamics.solve` / hand-written `lax.scan`",
                f"{sde['ratio_diffrax_over_scan']:.2f}×",
                f"≤ {goal}×",
                _met(sde["ratio_diffrax_over_scan"] <= goal),
            )
        )
        if "goal_speedup_over_torch_loop_min" in sde:
            if "speedup_diffrax_over_torch_loop" in sde:
                measured = _faster(sde["speedup_diffrax_over_torch_loop"])
            else:
                measured = sde.get("torch_loop", "not run")
            rows.append(
                (
                    "2. SDE, N=256, d=100, 10⁴ steps",
                    "`dynamics.solve` vs hand-written PyTorch loop",
                    measured,
                    f"≥ {sde['goal_speedup_over_torch_loop_min']}×",
                    _met(sde.get("goal_met_torch_loop")),
                )
            )
    peers = results.get("bench_sde_peers")
    if peers:
        if "speedup_diffrax_over_torchsde" in peers:
            measured = _faster(peers["speedup_diffrax_over_torchsde"])
        else:
            measured = peers.get("torchsde", "not run")
        rows.append(
            (
                "2. SDE, N=256, d=100, 10⁴ steps",
                "`dynamics.solve` vs torchsde (Euler)",
                measured,
                f"≥ {peers['goal_speedup_min']}×",
                _met(peers["goal_met"]),
            )
        )
    async_ = results.get("bench_async")
    if async_ and "ratio" in async_:
        rows.append(
            (
                f"3. async pool, W = {async_.get('workers', '?')}",
                "cost per applied gradient / sequential SGD",
                f"{async_['ratio']:.2f}×",
                f"≤ {async_.get('goal_ratio_max', 1.3)}×",
                _met(async_["ratio"] <= async_.get("goal_ratio_max", 1.3)),
            )
        )
    memory = results.get("bench_memory")
    if memory:
        families = (
            ("pool_workers", "W", "3. async memory vs W", "param"),
            ("delay_tau_max", "τ_max", "3. async memory vs τ_max", "param"),
            ("sdde_delay", "D", "3. delay SDE memory vs D", "state"),
        )
        for key, label, title, unit in families:
            if key not in memory:
                continue
            fit = memory[key]
            rows.append(
                (
                    title,
                    "compiled peak, linear fit",
                    f"{fit['copies_of_params_per_unit']:.2f} {unit} copies per {label}, "
                    f"R² = {fit['r2_linear']:.4f}",
                    f"O({label} × {unit}): ≤ 2 copies, R² ≥ 0.999",
                    _met(fit["goal_met"]),
                )
            )
    scaling = results.get("bench_scaling")
    if scaling:
        first, last = scaling["rows"][0], scaling["rows"][-1]
        rows.append(
            (
                f"4. scaling, N = {first['agents']} … {last['agents']}",
                "time per step",
                f"{first['time_per_step_s'] * 1e3:.2f} ms … {last['time_per_step_s'] * 1e3:.1f} ms",
                "—",
                "—",
            )
        )
        rows.append(
            (
                f"4. scaling, N = {last['agents']}",
                f"training FLOP rate / matmul rate ({scaling['matmul_flops_per_s'] / 1e9:.0f} "
                "GFLOP/s)",
                f"{100 * last['fraction_of_matmul_rate']:.1f} %",
                "reported (no goal set)",
                "—",
            )
        )
        if "bandwidth_fraction_at_largest_n" in scaling:
            gbs = scaling["copy_bandwidth_bytes_per_s"] / 1e9
            rows.append(
                (
                    f"4. scaling, N = {last['agents']}",
                    f"bandwidth bound (params read + written once at {gbs:.1f} GB/s) / step time",
                    f"{100 * scaling['bandwidth_fraction_at_largest_n']:.1f} %",
                    f"≥ {100 * scaling['goal_bandwidth_fraction_min']:.0f} %",
                    _met(scaling["goal_met"]),
                )
            )
    return rows


def machine_line(results: dict[str, dict]) -> str:
    for result in results.values():
        if "machine" in result:
            m = result["machine"]
            return (
                f"Measured on {m.get('processor', '?')} ({m.get('device_count', '?')} "
                f"{m.get('platform', '?')} device(s), {m.get('device', '')}), "
                f"Python {m.get('python', '?')}, JAX {m.get('jax', '?')}."
            )
    return "Machine not recorded."


def notes(results: dict[str, dict]) -> list[str]:
    """Measured facts behind the rows (from the same JSON), one sentence each."""
    out = []
    sde = results.get("bench_sde", {})
    parts = sde.get("us_per_step_components")
    if parts:
        n = sde["agents"] * sde["dim"]
        line = (
            f"Where an SDE step goes ({n:,} normals per step, µs per step): threefry bits "
            f"{parts['threefry_bits']:.0f}, normals (bits + inverse erf) {parts['normals']:.0f}, "
            f"the drift alone {parts['drift_only']:.0f}"
        )
        if "torch_randn[1t]" in parts:
            line += f"; PyTorch's `randn` alone {parts['torch_randn[1t]']:.0f}"
        out.append(line + ".")
    scaling = results.get("bench_scaling", {})
    training = results.get("bench_training", {})
    at_goal = training.get("per_agents", {}).get(str(training.get("goal_agents")))
    if at_goal and "flops_per_agent_step" in scaling and "matmul_flops_per_s" in scaling:
        rate = at_goal["agent_steps_per_s"]["jax"] * scaling["flops_per_agent_step"]
        line = (
            f"Training at N = {training['goal_agents']} on one device runs at {rate / 1e9:.0f} "
            f"GFLOP/s of matmul work, {100 * rate / scaling['matmul_flops_per_s']:.0f} % of the "
            f"rate of one large matmul ({scaling['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s): the "
            "per-agent matrices are small (batch 32, widths 40-100)"
        )
        for name, devices in at_goal["devices"].items():
            if devices == 1:
                continue
            line += (
                f"; sharded over {devices} CPU devices, "
                f"{at_goal['agent_steps_per_s'][name] / at_goal['agent_steps_per_s']['jax']:.2f}×"
                " the one-device rate"
            )
        out.append(line + ".")
        out.extend(_kernels_note(training))
        out.extend(_sharding_note(training["goal_agents"], at_goal))
    pool = results.get("bench_async", {})
    if "sequential_us_per_gradient" in pool:
        line = (
            f"Per applied gradient (medians): the pool {pool['pool_us_per_gradient']:.0f} µs, "
            f"sequential SGD {pool['sequential_us_per_gradient']:.0f} µs"
        )
        if "snapshot_us_per_gradient" in pool:
            line += (
                f", sequential SGD with only the memory traffic of {pool['workers']} snapshots "
                "(each gradient at a stored copy, the new parameters written back) "
                f"{pool['snapshot_us_per_gradient']:.0f} µs; paired ratios to sequential SGD: "
                f"the pool {pool['ratio']:.2f}×, the snapshots alone "
                f"{pool['snapshot_ratio']:.2f}×"
            )
        out.append(line + ".")
    out.extend(_bandwidth_note(scaling, training, at_goal))
    return out


def _bandwidth_note(scaling: dict, training: dict, at_goal: dict | None) -> list[str]:
    """The bandwidth bound at the largest N against the measured step, and two floors under
    the step from the training benchmark: its products alone, and its fastest rate."""
    if "copy_bandwidth_bytes_per_s" not in scaling:
        return []
    last = scaling["rows"][-1]
    bound_ms = 1e3 * last["bytes_per_step_bound"] / scaling["copy_bandwidth_bytes_per_s"]
    line = (
        f"At N = {last['agents']} a step must move at least "
        f"{last['bytes_per_step_bound'] / 2**20:.0f} MiB (every agent's and the center's "
        f"parameters read and written once): {bound_ms:.1f} ms at the measured copy "
        f"bandwidth, against {1e3 * last['time_per_step_s']:.1f} ms measured"
    )
    kernels = training.get("matmul_kernels", {})
    if "xla[1 dev]" in kernels and "step_products_flops_per_agent" in training:
        # The products' work spread over the devices at the one-device products rate:
        # what the matmuls alone would take, with no cache misses and perfect scaling.
        rate = kernels["xla[1 dev]"]["gflop_per_s"] * 1e9 * last["devices"]
        products_ms = 1e3 * last["agents"] * training["step_products_flops_per_agent"] / rate
        line += (
            f"; the step's batched products alone would take {products_ms:.1f} ms at the "
            f"one-device rate of the products line on each of {last['devices']} devices"
        )
    rates = {
        k: r
        for source in ("agent_steps_per_s", "uncoupled_agent_steps_per_s")
        for k, r in (at_goal or {}).get(source, {}).items()
        if k.startswith("jax")
    }
    if rates:
        # The fastest per-agent rate measured, at a size where the parameters stay in the
        # cache: a step of the largest N at that rate is bound by compute, not memory.
        fastest = max(rates, key=rates.get)
        step_ms = 1e3 * last["agents"] / rates[fastest]
        line += (
            f"; at the fastest rate measured at N = {training['goal_agents']} ({fastest}, "
            f"{rates[fastest]:,.0f} agent-steps/s, the parameters in the cache) it would take "
            f"{step_ms:.1f} ms (bound / step time {100 * bound_ms / step_ms:.0f} %)"
        )
    return [line + "."]


def _kernels_note(training: dict) -> list[str]:
    """The step's matmuls alone, XLA against PyTorch's `bmm` (`bench_training.matmul_kernels`)."""
    kernels = training.get("matmul_kernels")
    if not kernels:
        return []

    def part(k: dict) -> str:
        return (
            f"{k['us_per_agent_step']:.0f} µs per agent-step ({k['gflop_per_s']:.0f} GFLOP/s, "
            f"{k['cores_busy']:.1f} cores busy)"
        )

    parts = [f"XLA on one device {part(kernels['xla[1 dev]'])}"]
    for name, k in kernels.items():
        if name.startswith("torch_bmm["):
            threads = name[len("torch_bmm[") : -len("t]")]
            plural = "" if threads == "1" else "s"
            parts.append(f"PyTorch's `bmm` with {threads} thread{plural} {part(k)}")
    return [
        f"The batched matrix products of a training step alone (N = {training['goal_agents']}, "
        "forward, xᵀ·dy and dy·Wᵀ; no bias, activation, loss or update): " + "; ".join(parts) + "."
    ]


def _sharding_note(num_agents: int, at_goal: dict) -> list[str]:
    """What the per-step all-reduce costs sharded EASGD, from the uncoupled reference runs."""
    out = []
    best_torch = max(
        (r for k, r in at_goal["agent_steps_per_s"].items() if k.startswith("torch_vmap[")),
        default=None,
    )
    for d, speedup in at_goal.get("sharding_speedup", {}).items():
        line = (
            f"Sharded over {d} devices at N = {num_agents}, uncoupled SGD (the same agents and "
            f"gradients, no center) runs {speedup['uncoupled']:.2f}× its one-device rate and "
            f"EASGD {speedup['easgd']:.2f}×: EASGD's center needs an all-reduce of the "
            "parameters every step, a barrier at which each device waits for the other"
        )
        cpu = at_goal.get("jax_cpu_us_per_agent_step", {})
        labels = ("jax", f"jax[{d} dev]", "jax_uncoupled", f"jax_uncoupled[{d} dev]")
        if all(k in cpu for k in labels):
            line += (
                f"; CPU time per agent-step (all threads), EASGD {cpu[labels[0]]:.0f} µs on one "
                f"device and {cpu[labels[1]]:.0f} µs on {d}, uncoupled SGD {cpu[labels[2]]:.0f} "
                f"and {cpu[labels[3]]:.0f} µs"
            )
        if best_torch:
            # D devices on D cores cannot beat D×; a faster uncoupled ratio is noise in the
            # one-device reference.
            scaling = min(speedup["uncoupled"], float(d))
            ideal = at_goal["agent_steps_per_s"]["jax"] * scaling
            line += (
                f"; scaled as uncoupled SGD is ({scaling:.2f}×, at most {d}×), EASGD would run "
                f"at {ideal:,.0f} agent-steps/s, {ideal / best_torch:.1f}× `torch.func`"
            )
        out.append(line + ".")
    return out


def markdown_table(results: dict[str, dict]) -> str:
    lines = [
        "| benchmark | comparison | measured | goal | met |",
        "|---|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in table_rows(results)),
        "",
        *(f"{note}\n" for note in notes(results)),
        machine_line(results),
    ]
    return "\n".join(lines) + "\n"


def figure(results: dict[str, dict], path: Path) -> None:
    """One panel per benchmark family; panels without results say so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    ax = axes[0, 0]
    training = results.get("bench_training")
    if training:
        agents = [int(n) for n in training["per_agents"]]
        names = list(next(iter(training["per_agents"].values()))["agent_steps_per_s"])
        for name in names:
            rates = [training["per_agents"][str(n)]["agent_steps_per_s"][name] for n in agents]
            ax.plot(agents, rates, "o-", label=name)
        ax.set(xscale="log", yscale="log", xlabel="agents N", ylabel="agent-steps per second")
        ax.legend(fontsize=8)
    ax.set_title("1. EASGD, MLP on MNIST-1D (higher is better)")

    ax = axes[0, 1]
    bars = {}
    if "bench_sde" in results:
        for k, v in results["bench_sde"]["timings"].items():
            bars[k] = v["median_s"]
    if "timings" in results.get("bench_sde_peers", {}):
        for k, v in results["bench_sde_peers"]["timings"].items():
            label = "diffrax_solve (torchsde run)" if k == "diffrax_solve" else k
            bars.setdefault(label, v["median_s"])
    if bars:
        ax.bar(range(len(bars)), list(bars.values()))
        ax.set_xticks(range(len(bars)), list(bars), rotation=20, fontsize=8)
        ax.set(yscale="log", ylabel="seconds (median)")
    ax.set_title("2. SDE, N=256, d=100, 10⁴ Euler–Maruyama steps (lower is better)")

    ax = axes[1, 0]
    memory = results.get("bench_memory")
    if memory:
        sizes = memory["sizes"]
        for key, label in (("pool_workers", "pool: W workers"), ("delay_tau_max", "delay: τ_max")):
            peaks = [r["peak_bytes"] / 2**20 for r in memory[key]["measured"]]
            model = [b / 2**20 for b in memory[key]["model_one_copy_bytes"]]
            (line,) = ax.plot(sizes, peaks, "o-", label=f"{label} (measured)")
            ax.plot(sizes, model, "--", color=line.get_color(), label=f"{label} (1 copy/unit)")
        ax.set(xscale="log", yscale="log", xlabel="W or τ_max", ylabel="compiled peak (MiB)")
        ax.legend(fontsize=8)
    ax.set_title("3. asynchrony memory against the O(W × params) model")

    ax = axes[1, 1]
    scaling = results.get("bench_scaling")
    if scaling:
        agents = [r["agents"] for r in scaling["rows"]]
        ax.plot(agents, [r["time_per_step_s"] * 1e3 for r in scaling["rows"]], "o-", label="ms")
        ax.set(xscale="log", yscale="log", xlabel="agents N", ylabel="time per step (ms)")
        twin = ax.twinx()
        frac = [100 * r["fraction_of_matmul_rate"] for r in scaling["rows"]]
        twin.plot(agents, frac, "s--", color="C1")
        twin.set_ylabel("% of measured matmul FLOP rate", color="C1")
    ax.set_title("4. scaling in N (EASGD step)")
    fig.suptitle(machine_line(results), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


README_BEGIN = "<!-- benchmark table: `python -m benchmarks.plot --readme README.md` writes it -->"
README_END = "<!-- end of benchmark table -->"


def readme_block(results: dict[str, dict]) -> str:
    """The README's benchmark section body: the table between its two marker lines."""
    return f"{README_BEGIN}\n{markdown_table(results)}{README_END}"


def update_readme(readme: Path, results_dir: Path = RESULTS, *, check: bool = False) -> bool:
    """Replace the README's table (between the markers) with the one from `results_dir`.

    Returns True if the README already held it. With `check`, nothing is written.
    """
    text = Path(readme).read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no benchmark table markers ({README_BEGIN!r} … )")
    block = readme_block(load_results(results_dir))
    current = text[start : end + len(README_END)]
    if current == block:
        return True
    if not check:
        Path(readme).write_text(text[:start] + block + text[end + len(README_END) :])
    return False


def main(results_dir: Path = RESULTS) -> str:
    """Write the figure and the table; return the table (Markdown)."""
    results = load_results(results_dir)
    table = markdown_table(results)
    (Path(results_dir) / "table.md").write_text(table)
    figure(results, Path(results_dir) / "benchmarks.png")
    return table


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--readme"]:
        readme = Path(args[1])
        ok = update_readme(readme, Path(args[2]) if len(args) > 2 else RESULTS)
        print(f"{readme}: {'up to date' if ok else 'benchmark table updated'}")
    else:
        print(main(Path(args[0]) if args else RESULTS))
