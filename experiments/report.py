"""The report: one HTML page and one Markdown file with every figure and claim verdict."""

from __future__ import annotations

import html
import importlib.metadata
import json
import platform
from pathlib import Path

from .store import atomic_write, load_metrics

__all__ = ["write_report"]

_PACKAGES = ("jax", "jaxlib", "diffrax", "optax", "flax", "equinox", "numpy", "scipy")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _verdict(holds: bool) -> str:
    return "holds" if holds else "DOES NOT HOLD"


def write_report(out: Path, experiments) -> tuple[Path, Path]:
    """Write `out/report.html` and `out/report.md` from every finished run under `out`.

    `experiments` is the registry (ordered modules); runs not yet made are listed as missing.
    """
    out = Path(out)
    versions = _versions()
    md = ["# Results report", "", "Package versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    body = [
        "<h1>Results report</h1>",
        "<p>Package versions: " + html.escape(", ".join(f"{k} {v}" for k, v in versions.items())) + "</p>",
    ]
    summary = []
    for module in experiments:
        directory = out / module.NAME
        metrics = load_metrics(directory)
        md += [f"## {module.NAME}", "", module.DESCRIPTION, ""]
        body += [f"<h2 id='{module.NAME}'>{module.NAME}</h2>", f"<p>{html.escape(module.DESCRIPTION)}</p>"]
        if metrics is None:
            md += ["*Not run yet.*", ""]
            body.append("<p><em>Not run yet.</em></p>")
            summary.append((module.NAME, None))
            continue
        cfg = json.loads((directory / "config.json").read_text())
        mode = "quick" if metrics["quick"] else "full"
        line = f"Mode: {mode}; seed {metrics['seed']}; wall time {metrics['wall_seconds']:.1f} s."
        md += [line, ""]
        body.append(f"<p>{html.escape(line)}</p>")
        md += ["| claim | statement | value | target | verdict |", "|---|---|---|---|---|"]
        body.append("<table border=1 cellpadding=4><tr><th>claim</th><th>statement</th><th>value</th><th>target</th><th>verdict</th></tr>")
        all_hold = True
        for c in metrics["claims"]:
            all_hold &= c["holds"]
            value = c["value"] if isinstance(c["value"], str) else f"{c['value']:.4g}"
            md.append(f"| {c['id']} | {c['statement']} | {value} | {c['target']} | {_verdict(c['holds'])} |")
            color = "#d4f7d4" if c["holds"] else "#f7d4d4"
            body.append(
                f"<tr style='background:{color}'><td>{html.escape(c['id'])}</td><td>{html.escape(c['statement'])}</td>"
                f"<td>{html.escape(value)}</td><td>{html.escape(c['target'])}</td><td>{_verdict(c['holds'])}</td></tr>"
            )
        body.append("</table>")
        summary.append((module.NAME, all_hold))
        scalars = {k: v for k, v in metrics.items() if k not in ("claims", "figures", "experiment")}
        md += ["", "Metrics: " + ", ".join(f"`{k}` = {v:.4g}" if isinstance(v, float) else f"`{k}` = {v}" for k, v in scalars.items()), ""]
        body.append("<p>Metrics: " + html.escape(", ".join(f"{k} = {v}" for k, v in scalars.items())) + "</p>")
        for fig in metrics.get("figures", []):
            rel = f"{module.NAME}/{fig}.png"
            md += [f"![{module.NAME} {fig}]({rel})", ""]
            body.append(f"<p><img src='{rel}' style='max-width:100%'><br><a href='{module.NAME}/{fig}.pdf'>PDF</a></p>")
        md += ["<details><summary>config</summary>", "", "```json", json.dumps(cfg["config"], indent=1), "```", "</details>", ""]
        body.append(f"<details><summary>config</summary><pre>{html.escape(json.dumps(cfg['config'], indent=1))}</pre></details>")
    head = ["<h2>Summary</h2><ul>"]
    for name, ok in summary:
        state = "not run" if ok is None else ("all claims hold" if ok else "SOME CLAIMS DO NOT HOLD")
        head.append(f"<li><a href='#{name}'>{name}</a>: {state}</li>")
    head.append("</ul>")
    page = "<!doctype html><html><head><meta charset='utf-8'><title>Results report</title></head><body style='font-family:sans-serif;max-width:1100px;margin:auto'>"
    page += "\n".join(body[:2] + head + body[2:]) + "</body></html>"
    html_path, md_path = out / "report.html", out / "report.md"
    atomic_write(html_path, lambda fh: fh.write(page.encode()))
    atomic_write(md_path, lambda fh: fh.write("\n".join(md).encode()))
    return html_path, md_path
