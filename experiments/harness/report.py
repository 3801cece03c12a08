"""The report: one HTML page and one Markdown file with every figure and claim verdict.

Every claim shows its three-state verdict (green "holds", red "FAILS", amber "inconclusive":
the run cannot resolve the effect) with its value, target and interval; a failing claim is
never hidden, and an experiment without a finished run is listed as not run.
"""

from __future__ import annotations

import html
import importlib.metadata
import json
import platform
from pathlib import Path

from .files import atomic_write
from .store import load_metrics

__all__ = ["format_interval", "summarize", "write_report"]

_PACKAGES = ("jax", "jaxlib", "diffrax", "optax", "flax", "equinox", "numpy", "scipy")
_HEAD = (
    "<!doctype html><html><head><meta charset='utf-8'><title>Results report</title>"
    "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
    "td,th{border:1px solid #999;padding:4px}table{border-collapse:collapse}"
    ".holds{background:#d4f7d4}.fails{background:#f7d4d4}.inconclusive{background:#f7ecc4}</style></head><body>"
)
_COLUMNS = ("claim", "statement", "value", "interval", "target", "verdict")
_SHOWN = {"holds": "holds", "fails": "FAILS", "inconclusive": "inconclusive"}


def _versions() -> str:
    out = [f"python {platform.python_version()}"]
    for name in _PACKAGES:
        try:
            out.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} not installed")
    return ", ".join(out)


def _num(v) -> str:
    return v if isinstance(v, str) else f"{v:.4g}"


def format_interval(interval) -> str:
    """`[lo, hi]` with 4 significant digits, or "—" for a deterministic claim."""
    return "—" if interval is None else f"[{_num(interval[0])}, {_num(interval[1])}]"


def summarize(claims) -> str:
    """ "2/3 hold, 1 inconclusive" for a list of claim dicts."""
    counts = {v: sum(c["verdict"] == v for c in claims) for v in _SHOWN}
    text = f"{counts['holds']}/{len(claims)} hold"
    for v in ("fails", "inconclusive"):
        if counts[v]:
            text += f", {counts[v]} {'fail' if v == 'fails' else v}"
    return text


def _claim_row(c: dict) -> tuple[str, ...]:
    interval = format_interval(c.get("interval"))
    return c["id"], c["statement"], _num(c["value"]), interval, c["target"], _SHOWN[c["verdict"]]


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _section(module, directory: Path) -> tuple[list[str], list[str], str | None]:
    """Markdown lines, HTML lines and the verdict summary (None: not run)."""
    md = [f"## {module.NAME}", "", module.DESCRIPTION, ""]
    body = [
        f"<h2 id='{module.NAME}'>{module.NAME}</h2>",
        f"<p>{html.escape(module.DESCRIPTION)}</p>",
    ]
    metrics = load_metrics(directory)
    if metrics is None:
        return md + ["*Not run yet.*", ""], body + ["<p><em>Not run yet.</em></p>"], None
    config = json.loads((directory / "config.json").read_text())["config"]
    mode = "quick" if metrics["quick"] else "full"
    line = f"Mode: {mode}; seed {metrics['seed']}; wall time {metrics['wall_seconds']:.1f} s."
    md += [line, "", "| " + " | ".join(_COLUMNS) + " |", "|---" * len(_COLUMNS) + "|"]
    body += [f"<p>{html.escape(line)}</p>", "<table><tr>"]
    body += [f"<th>{c}</th>" for c in _COLUMNS] + ["</tr>"]
    for c in metrics["claims"]:
        row = _claim_row(c)
        md.append("| " + " | ".join(x.replace("|", "\\|") for x in row) + " |")
        cells = "".join(f"<td>{html.escape(x)}</td>" for x in row)
        body.append(f"<tr class='{c['verdict']}'>{cells}</tr>")
    body.append("</table>")
    skip = ("claims", "figures", "experiment", "quick", "seed", "wall_seconds")
    scalars = ", ".join(f"{k} = {_fmt(v)}" for k, v in metrics.items() if k not in skip)
    md += ["", f"Metrics: {scalars}", ""]
    body.append(f"<p>Metrics: {html.escape(scalars)}</p>")
    for fig in metrics.get("figures", []):
        rel = f"{module.NAME}/{fig}"
        md += [f"![{rel}]({rel}.png)", ""]
        body.append(f"<p><img src='{rel}.png' style='max-width:100%'><br>")
        body.append(f"<a href='{rel}.pdf'>PDF</a></p>")
    cfg = json.dumps(config, indent=1)
    md += ["<details><summary>config</summary>", "", "```json", cfg, "```", "</details>", ""]
    body.append(f"<details><summary>config</summary><pre>{html.escape(cfg)}</pre></details>")
    return md, body, summarize(metrics["claims"])


def write_report(out: Path, experiments) -> tuple[Path, Path]:
    """Write `out/report.html` and `out/report.md` from every finished run under `out`.

    `experiments` is the registry's ordered tuple of modules.
    """
    out = Path(out)
    versions = _versions()
    md, body, md_summary, summary = [], [], [], ["<h2>Summary</h2><ul>"]
    for module in experiments:
        m, b, state = _section(module, out / module.NAME)
        md += m
        body += b
        state = "not run" if state is None else state
        summary.append(f"<li><a href='#{module.NAME}'>{module.NAME}</a>: {state}</li>")
        md_summary.append(f"- {module.NAME}: {state}")
    md = ["# Results report", "", f"Package versions: {versions}", "", *md_summary, "", *md]
    summary.append("</ul>")
    intro = ["<h1>Results report</h1>", f"<p>Package versions: {html.escape(versions)}</p>"]
    page = _HEAD + "\n".join(intro + summary + body) + "</body></html>"
    html_path, md_path = out / "report.html", out / "report.md"
    atomic_write(html_path, lambda fh: fh.write(page.encode()))
    atomic_write(md_path, lambda fh: fh.write("\n".join(md).encode()))
    return html_path, md_path
