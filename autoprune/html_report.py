"""`autoprune report`: PNG figures of a run or a sweep, and one self-contained HTML page showing them.

A run directory gets `progress.png` (best score so far per evaluation), `widths.png` (kept channels per layer
against the original) and `stages.png` (accuracy at each stage); a sweep directory gets `comparison.png` (best
score so far per evaluation for every method and target, mean over seeds with their range). `report.html`
embeds the images (base64), so the page can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import numpy as np

from autoprune.errors import AutopruneError
from autoprune.outputs import check_writable_folder
from autoprune.plan import Plan
from autoprune.plots import best_so_far, plot_best_so_far, plot_stages, plot_widths
from autoprune.recovery import stage_label
from autoprune.search.report import VAL_CAVEAT, cost, stages

_RUN_NAME = re.compile(r"^(?P<method>.+)-f(?P<target>[0-9.e+-]+)-s(?P<seed>\d+)$")


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write the figures and `report.html` of a run or sweep directory `folder` into `out` (default: `folder`).

    Returns:
        The path of report.html.
    """
    folder = Path(folder)
    out = Path(out) if out is not None else folder
    if (folder / "sweep.json").is_file():
        check_writable_folder(out, f"report folder {out}")
        out.mkdir(parents=True, exist_ok=True)
        return _sweep_report(folder, out)
    if not (folder / "plan.json").is_file():
        raise AutopruneError(f"{folder} is neither a finished run (no plan.json) nor a sweep (no sweep.json)")
    check_writable_folder(out, f"report folder {out}")
    out.mkdir(parents=True, exist_ok=True)
    return _run_report(folder, out)


def sweep_curves(folder: Path) -> dict[str, list[np.ndarray]]:
    """Best-so-far curves of a sweep's runs, keyed `method (FLOPs target)`, in the order the runs sort."""
    curves: dict[str, list[np.ndarray]] = {}
    for run in sorted((folder / "runs").glob("*")):
        match = _RUN_NAME.match(run.name)
        if match and (run / "metrics.csv").is_file():
            label = f"{match['method']} (FLOPs ≤ {float(match['target']):g})"
            curves.setdefault(label, []).append(best_so_far(run / "metrics.csv"))
    return curves


def plot_sweep(folder: str | Path) -> Path:
    """Write `comparison.png` of the sweep in `folder` (every method's best score so far per evaluation)."""
    folder = Path(folder)
    curves = sweep_curves(folder)
    if not curves:
        raise AutopruneError(f"{folder} holds no sweep runs with metrics.csv")
    return plot_best_so_far(curves, folder / "comparison.png", title="Sweep: best score so far (mean, range)")


def _sweep_report(folder: Path, out: Path) -> Path:
    curves = sweep_curves(folder)
    if not curves:
        raise AutopruneError(f"{folder} holds no sweep runs with metrics.csv")
    image = plot_best_so_far(curves, out / "comparison.png", title="Sweep: best score so far (mean, range)")
    table = folder / "comparison.md"
    body = [f"<h1>autoprune sweep: {html.escape(str(folder))}</h1>", _img(image, "best score so far per evaluation")]
    if table.is_file():
        body.append(_markdown_tables(table.read_text()))
    return _page(out / "report.html", "autoprune sweep", body)


def _run_report(folder: Path, out: Path) -> Path:
    plan = Plan.load(folder / "plan.json")
    m = plan.metrics
    images = []
    if (folder / "metrics.csv").is_file():
        curve = best_so_far(folder / "metrics.csv")
        images.append(
            _img(plot_best_so_far({str(m.get("method", "search")): [curve]}, out / "progress.png"), "progress")
        )
    found = stages(m)
    if found:
        images.append(_img(plot_stages(m, found, out / "stages.png"), "accuracy at each stage"))
    images.append(_img(plot_widths(plan, out / "widths.png"), "kept channels per layer"))
    a = plan.achieved
    rows = "".join(
        f"<tr><td>{html.escape(stage_label(s))}</td><td>{_pct(m.get(f'val_acc_{s}'))}</td>"
        f"<td>{_pct(m.get(f'test_acc_{s}'))}</td></tr>"
        for s in found
    )
    epochs = float(m.get("finetune_epochs") or 0)
    body = [
        f"<h1>autoprune run: {html.escape(plan.model_name)} ({html.escape(str(m.get('method', '?')))})</h1>",
        f"<p>FLOPs {a['flops_ratio']:.1%} and params {a['params_ratio']:.1%} of the unpruned model. "
        f"Search: {html.escape(cost(m))}. Fine-tuned: {f'{epochs:g} epochs' if epochs > 0 else 'no'}.</p>",
        f"<table><tr><th>stage</th><th>val acc</th><th>test acc</th></tr>{rows}</table>",
        f"<p><small>{html.escape(VAL_CAVEAT)}</small></p>",
        *images,
    ]
    return _page(out / "report.html", f"autoprune run {folder.name}", body)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _pct(value: object) -> str:
    return "–" if value is None else f"{100 * float(value):.2f}%"


def _markdown_tables(text: str) -> str:
    """The pipe tables and paragraphs of a Markdown text as HTML (enough for comparison.md)."""
    parts, table = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if table:
            head, *rest = table
            cells = "".join(f"<th>{html.escape(c)}</th>" for c in head)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rest)
            parts.append(f"<table><tr>{cells}</tr>{body}</table>")
            table = []
        if line.startswith("# "):
            continue
        if line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(parts)


def _page(path: Path, title: str, body: list[str]) -> Path:
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    doc = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    try:
        path.write_text(doc, encoding="utf-8")
    except OSError as exc:
        raise AutopruneError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


__all__ = ["plot_sweep", "sweep_curves", "write_report"]
