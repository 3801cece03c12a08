"""The command line: `python -m experiments {list,run,all,report}` (see `--help`).

The harness knows no experiment by name: `main(argv, experiments)` takes the registry
(a tuple of experiment modules), so the dependency runs one way, experiments -> harness.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from algorithms.sharding import agent_mesh, use_agent_mesh  # noqa: E402

from . import distributed  # noqa: E402
from .config import ConfigError, apply_overrides, describe, parse_overrides  # noqa: E402
from .report import format_interval, summarize, write_report  # noqa: E402
from .store import run_experiment  # noqa: E402
from .table import results_table, table_in, write_table  # noqa: E402


def make_config(module, quick: bool, overrides: dict[str, str]):
    """The module's default config, with quick-mode overrides, then the user's `--set`s."""
    config = module.Config()
    if quick:
        config = dataclasses.replace(config, **module.QUICK)
    return apply_overrides(config, overrides)


def _run_one(module, args) -> bool:
    config = make_config(module, args.quick, parse_overrides(args.set or []))
    # The agent axis goes on every device chosen (default all): run_agents reads this mesh.
    with use_agent_mesh(agent_mesh(args.devices)):
        metrics, reused = run_experiment(
            module, config, seed=args.seed, quick=args.quick, out=Path(args.out),
            force=args.force, quiet=args.quiet,
        )  # fmt: skip
    ok = all(c["verdict"] == "holds" for c in metrics["claims"])
    state = "reused" if reused else f"{metrics['wall_seconds']:.1f} s"
    print(f"{module.NAME}: {state}; claims {summarize(metrics['claims'])}")
    tags = {"holds": "ok", "fails": "FAIL", "inconclusive": "??"}
    for c in metrics["claims"]:
        interval = format_interval(c.get("interval"))
        print(f"  [{tags[c['verdict']]}] {c['id']}: {c['value']} {interval} (target {c['target']})")
    return ok


def get(name: str, experiments):
    """The experiment module called `name`; a ValueError lists the known names."""
    for module in experiments:
        if module.NAME == name:
            return module
    known = ", ".join(m.NAME for m in experiments)
    raise ValueError(f"unknown experiment {name!r}; known: {known}")


def main(argv=None, experiments=()) -> int:
    """Run the CLI on `argv` over `experiments` (the registry's modules, in report order)."""
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list every experiment")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true", help="quick mode (minutes on a laptop)")
    common.add_argument("--out", default="results", help="results directory (default results/)")
    common.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    common.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config field"
    )
    common.add_argument("--force", action="store_true", help="rerun even if a finished run exists")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    distributed.add_arguments(common)
    run = sub.add_parser("run", parents=[common], help="run one experiment")
    run.add_argument("name")
    sub.add_parser("all", parents=[common], help="run every experiment, then the report")
    rep = sub.add_parser("report", help="write report.html and report.md")
    rep.add_argument("--out", default="results")
    tab = sub.add_parser("table", help="regenerate the README's table of verdicts")
    tab.add_argument("--results", default="docs/results", help="shipped results directory")
    tab.add_argument("--readme", default="README.md")
    tab.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    run.add_argument("--show-config", action="store_true", help="list the config fields and exit")
    argv = sys.argv[1:] if argv is None else list(argv)
    # `run NAME --help` lists NAME's config fields (argparse alone cannot know them).
    if len(argv) >= 2 and argv[0] == "run" and ("--help" in argv or "-h" in argv):
        name = next((a for a in argv[1:] if not a.startswith("-")), None)
        if name is not None:
            run.print_help()
            try:
                module = get(name, experiments)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            print(f"\n{module.NAME}: {module.DESCRIPTION}\nconfig fields (--set KEY=VALUE):")
            print(config_help(module))
            return 0
    args = parser.parse_args(argv)
    try:
        if args.command in ("run", "all"):
            # Multi-host: a no-op for one process; must come before any other JAX work.
            distributed.initialize(
                args.coordinator, args.num_processes, args.process_id, cluster=args.cluster
            )
        if args.command == "list":
            for m in experiments:
                print(f"{m.NAME:28s} {m.DESCRIPTION}")
            return 0
        if args.command == "report":
            html_path, _ = write_report(Path(args.out), experiments)
            print(f"wrote {html_path}")
            return 0
        if args.command == "table":
            readme, results = Path(args.readme), Path(args.results)
            if args.check:
                fresh = table_in(readme.read_text()) == results_table(results, experiments)
                print(f"{readme}: table {'up to date' if fresh else 'STALE'}")
                return 0 if fresh else 1
            changed = write_table(readme, results, experiments)
            print(f"{readme}: table {'rewritten' if changed else 'already up to date'}")
            return 0
        if args.command == "run":
            module = get(args.name, experiments)
            if args.show_config:
                print(f"{module.NAME}: {module.DESCRIPTION}\nconfig fields:\n{config_help(module)}")
                return 0
            _run_one(module, args)
            return 0
        if args.command == "all":
            if args.set:
                parser.error("--set applies to one experiment: use `run NAME --set ...`")
            for module in experiments:
                _run_one(module, args)
            html_path, _ = write_report(Path(args.out), experiments)
            print(f"wrote {html_path}")
            return 0
    except (ConfigError, ValueError, OSError) as e:  # bad input, missing or corrupt data
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1


def config_help(module) -> str:
    """Every config field of `module` with its type, default and help."""
    rows = describe(module.Config)
    return "\n".join(f"  {n} ({t}, default {d!r}): {h}" for n, t, d, h in rows)
