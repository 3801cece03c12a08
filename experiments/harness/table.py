"""The README's table of verdicts, generated from the shipped results.

`make reproduce` writes every experiment's full-mode run to `docs/results/NAME/` and its
quick-mode run to `docs/results/quick/NAME/`; `results_table` turns their `metrics.json` files
into one Markdown table (a row per claim: value, interval and verdict in full and in quick
mode), and `write_table` puts it between the markers

    <!-- results-table:start -->
    <!-- results-table:end -->

of the README. `tests/test_docs.py` fails when the README's table and the files disagree, so
no verdict or number in the README is typed by hand.
"""

from __future__ import annotations

from pathlib import Path

from .files import atomic_write
from .report import format_interval, summarize
from .store import load_metrics

__all__ = ["START", "END", "results_table", "write_table", "table_in"]

START = "<!-- results-table:start -->"
END = "<!-- results-table:end -->"
_SHOWN = {"holds": "holds", "fails": "**fails**", "inconclusive": "*inconclusive*"}


def _cell(claim: dict | None) -> str:
    if claim is None:
        return "not run"
    value = claim["value"] if isinstance(claim["value"], str) else f"{claim['value']:.3g}"
    interval = claim.get("interval")
    shown = value if interval is None else f"{value} {format_interval(interval)}"
    return f"{_SHOWN[claim['verdict']]}: {shown}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def results_table(results: Path, experiments) -> str:
    """The Markdown table of every claim of `experiments` from `results/NAME/metrics.json`
    (full mode) and `results/quick/NAME/metrics.json` (quick mode)."""
    results = Path(results)
    lines = [
        "| experiment | claim | target | full mode | quick mode |",
        "|---|---|---|---|---|",
    ]
    for module in experiments:
        full = load_metrics(results / module.NAME)
        quick = load_metrics(results / "quick" / module.NAME)
        runs = [m for m in (full, quick) if m is not None]
        if not runs:
            lines.append(f"| `{module.NAME}` | — | — | not run | not run |")
            continue
        by_mode = [{c["id"]: c for c in m["claims"]} if m else {} for m in (full, quick)]
        ids = list(dict.fromkeys(c["id"] for m in runs for c in m["claims"]))
        for i, claim_id in enumerate(ids):
            claim = by_mode[0].get(claim_id) or by_mode[1][claim_id]
            name = f"`{module.NAME}`" if i == 0 else ""
            if i == 0:
                time = " / ".join(f"{m['wall_seconds']:.0f} s" if m else "—" for m in (full, quick))
                name += f" ({time}; full: {summarize(full['claims']) if full else 'not run'})"
            row = (
                name,
                f"{claim_id}: {_escape(claim['statement'])}",
                _escape(claim["target"]),
                _cell(by_mode[0].get(claim_id)),
                _cell(by_mode[1].get(claim_id)),
            )
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def table_in(text: str) -> str:
    """The table between the markers of a README's text (ValueError without markers)."""
    if START not in text or END not in text:
        raise ValueError(f"the README has no {START} … {END} block")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def write_table(readme: Path, results: Path, experiments) -> bool:
    """Replace the table between the README's markers; True when it changed."""
    readme = Path(readme)
    text = readme.read_text()
    old = table_in(text)
    new = results_table(results, experiments)
    if old == new:
        return False
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    updated = f"{before}{START}\n{new}\n{END}{after}"
    atomic_write(readme, lambda fh: fh.write(updated.encode()))
    return True
