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


def table_rows(results: dict[str, dict]) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, comparison, measured, goal, met) rows."""
    rows = []
    training = results.get("bench_training")
    if training:
        goals, met = training["goals_speedup_min"], training["goal_met"]
        for n, entry in training["per_agents"].items():
            jax_rate = entry["agent_steps_per_s"]["jax"]
            for peer, speedup in entry.get("speedup_jax_over", {}).items():
                at_goal = int(n) == training["goal_agents"]
                rows.append(
                    (
                        f"1. training, N = {n}",
                        f"JAX ({jax_rate:,.0f} agent-steps/s) vs {peer}",
                        f"{speedup:.1f}× faster",
                        f"≥ {goals[peer]}×" if at_goal else "—",
                        _met(met[peer]) if at_goal else "—",
                    )
                )
        if training.get("torch", "").startswith("skipped"):
            rows.append(("1. training", "PyTorch peers", training["torch"], "—", "—"))
    sde = results.get("bench_sde")
    if sde:
        rows.append(
            (
                "2. SDE, N=256, d=100, 10⁴ steps",
                "`dynamics.solve` / hand-written `lax.scan`",
                f"{sde['ratio_diffrax_over_scan']:.2f}×",
                f"≤ {sde.get('goal_ratio_max', 1.3)}× (issue: ≤ 1.3×)",
                _met(sde["ratio_diffrax_over_scan"] <= 1.3),
            )
        )
    peers = results.get("bench_sde_peers")
    if peers:
        if "speedup_diffrax_over_torchsde" in peers:
            measured = f"{peers['speedup_diffrax_over_torchsde']:.1f}× faster"
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
                "≤ 1.3×",
                _met(async_["ratio"] <= 1.3),
            )
        )
    memory = results.get("bench_memory")
    if memory:
        for key, label in (("pool_workers", "W"), ("delay_tau_max", "τ_max")):
            fit = memory[key]
            rows.append(
                (
                    f"3. async memory vs {label}",
                    "compiled peak, linear fit",
                    f"{fit['copies_of_params_per_unit']:.2f} param copies per {label}, "
                    f"R² = {fit['r2_linear']:.4f}",
                    "O(" + label + " × params): ≤ 2 copies, R² ≥ 0.999",
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


def markdown_table(results: dict[str, dict]) -> str:
    lines = [
        "| benchmark | comparison | measured | goal | met |",
        "|---|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in table_rows(results)),
        "",
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


def main(results_dir: Path = RESULTS) -> str:
    """Write the figure and the table; return the table (Markdown)."""
    results = load_results(results_dir)
    table = markdown_table(results)
    (Path(results_dir) / "table.md").write_text(table)
    figure(results, Path(results_dir) / "benchmarks.png")
    return table


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS))
