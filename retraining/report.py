"""The pipeline's report: JSON for machines, Markdown for people, a PNG of per-class IoU."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from retraining.gates import per_class_iou
from sceneparse.atomic import atomic_write_text
from training.reports import save_figure


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def plot_class_iou(path: Path, class_names: list[str], candidate: dict, deployed: dict | None) -> Path:
    """A grouped bar chart: deployed vs candidate IoU for every class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    new = per_class_iou(candidate)
    old = per_class_iou(deployed) if deployed else []
    n = len(new)
    names = class_names[:n] if len(class_names) >= n else [f"class {i}" for i in range(n)]
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * n + 2), 4.0))
    if old and len(old) == n:
        ax.bar(x - 0.2, np.nan_to_num(old), 0.4, label=f"deployed (mIoU {_fmt(deployed.get('mIoU'))})", color="#9aa5b1")
        ax.bar(x + 0.2, np.nan_to_num(new), 0.4, label=f"candidate (mIoU {_fmt(candidate.get('mIoU'))})", color="#2f80ed")
    else:
        ax.bar(x, np.nan_to_num(new), 0.6, label=f"candidate (mIoU {_fmt(candidate.get('mIoU'))})", color="#2f80ed")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1.15)  # headroom above 1.0 keeps the legend off the bars
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("IoU")
    ax.set_title("Per-class IoU: candidate vs deployed")
    ax.legend(loc="upper center", ncol=2, frameon=False)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def write_report(run_dir: Path, report: dict[str, Any], class_names: list[str]) -> dict[str, Path]:
    """Write report.json, report.md and per_class_iou.png into run_dir; returns their paths."""
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": run_dir / "report.json", "markdown": run_dir / "report.md"}
    candidate, deployed = report.get("candidate_metrics"), report.get("deployed_metrics")
    if candidate:
        paths["plot"] = plot_class_iou(run_dir / "per_class_iou.png", class_names, candidate, deployed)
    atomic_write_text(paths["json"], json.dumps(report, indent=2, default=str) + "\n")

    lines = [f"# Retraining report: {report['name']}", "",
             f"- outcome: **{report['outcome']}**",
             f"- run: `{run_dir}`",
             f"- deployed before: version {report.get('deployed_version') or 'none'}",
             f"- published: version {report.get('published_version') or 'none'}", ""]
    if report.get("error"):
        lines += [f"Error: {report['error']}", ""]
    gates = report.get("gates")
    if gates:
        lines += ["## Gates", "", "| gate | result | detail |", "|---|---|---|"]
        lines += [f"| {c['name']} | {'pass' if c['passed'] else 'FAIL'} | {c['detail']} |" for c in gates["checks"]]
        lines.append("")
    if candidate:
        lines += ["## Metrics", "", "| metric | deployed | candidate |", "|---|---|---|"]
        for key in ("mIoU", "mAcc", "aAcc"):
            lines.append(f"| {key} | {_fmt((deployed or {}).get(key))} | {_fmt(candidate.get(key))} |")
        new, old = per_class_iou(candidate), per_class_iou(deployed or {})
        lines += ["", "| class | deployed IoU | candidate IoU |", "|---|---|---|"]
        for index, value in enumerate(new):
            name = class_names[index] if index < len(class_names) else f"class {index}"
            before = old[index] if index < len(old) else None
            lines.append(f"| {name} | {_fmt(before)} | {_fmt(value)} |")
        if "plot" in paths:
            lines += ["", "![per-class IoU](per_class_iou.png)"]
    lines += ["", "## Steps", "", "| step | seconds | status |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['seconds']:.1f} | {s['status']} |" for s in report.get("steps", [])]
    atomic_write_text(paths["markdown"], "\n".join(lines) + "\n")
    return paths
