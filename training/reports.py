"""Evaluation reports: the per-class table printed, and saved as JSON, CSV and a PNG bar chart.

All functions take the dict returned by `training.metrics.summarize`. NaN (a class with no
defined IoU/accuracy under the "exclude" policy) is written as null in JSON, empty in CSV and
"-" in the printed table.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from sceneparse.atomic import atomic_open, atomic_write_text

CSV_COLUMNS = ("id", "name", "iou", "accuracy", "intersection", "union", "target")


def _finite_or_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100.0 * value:6.2f}"


def format_table(metrics: dict) -> str:
    """The per-class IoU/accuracy table and the summary line, as the text `sceneparse test` prints."""
    rows = metrics["per_class"]
    width = max([len("class")] + [len(row["name"]) for row in rows])
    lines = [f"{'id':>4}  {'class':<{width}}  {'IoU %':>7}  {'Acc %':>7}  {'pixels':>12}"]
    for row in rows:
        lines.append(
            f"{row['id']:>4}  {row['name']:<{width}}  {_percent(row['iou']):>7}  "
            f"{_percent(row['accuracy']):>7}  {row['target']:>12}"
        )
    lines.append(summary_line(metrics))
    return "\n".join(lines)


def summary_line(metrics: dict) -> str:
    """'mIoU 71.23  mAcc 80.01  aAcc 93.40  (absent classes: exclude, 150/150 in mIoU)'."""
    return (
        f"mIoU {_percent(metrics['mIoU']).strip()}  mAcc {_percent(metrics['mAcc']).strip()}  "
        f"aAcc {_percent(metrics['aAcc']).strip()}  (absent classes: {metrics['absent']}, "
        f"{metrics['classes_in_miou']}/{metrics['num_classes']} in mIoU)"
    )


def save_figure(figure, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG, atomically (a reader never sees half a picture)."""
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=dpi)
    return path


def write_json(metrics: dict, path: str | Path, extra: dict | None = None) -> Path:
    """Write the metrics (plus optional `extra` fields, e.g. the run's settings) as strict JSON."""
    path = Path(path)
    document = {key: value for key, value in metrics.items() if key != "per_class"}
    document = {key: _finite_or_none(value) for key, value in document.items()}
    document["per_class"] = [{k: _finite_or_none(v) for k, v in row.items()} for row in metrics["per_class"]]
    if extra:
        document.update(extra)
    atomic_write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")
    return path


def write_csv(metrics: dict, path: str | Path) -> Path:
    """Write one row per class (columns `CSV_COLUMNS`; IoU/accuracy as fractions in [0, 1])."""
    path = Path(path)
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in metrics["per_class"]:
            writer.writerow(["" if _finite_or_none(row[key]) is None else row[key] for key in CSV_COLUMNS])
    return path


def plot_per_class(metrics: dict, path: str | Path, title: str | None = None) -> Path:
    """A horizontal bar chart of per-class IoU and accuracy (percent), one row per class, as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers or CI
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    rows = metrics["per_class"]
    names = [row["name"] for row in rows]
    iou = np.array([row["iou"] for row in rows], dtype=float) * 100.0
    acc = np.array([row["accuracy"] for row in rows], dtype=float) * 100.0
    positions = np.arange(len(rows))
    height = max(3.0, 0.22 * len(rows) + 1.5)  # 150 ADE20K classes stay readable
    figure, axes = plt.subplots(figsize=(8.0, height))
    try:
        axes.barh(positions - 0.2, np.nan_to_num(iou), height=0.4, label="IoU", color="#1f77b4")
        axes.barh(positions + 0.2, np.nan_to_num(acc), height=0.4, label="accuracy", color="#ff7f0e")
        axes.set_yticks(positions, names, fontsize=7 if len(rows) > 40 else 9)
        axes.invert_yaxis()
        axes.set_xlim(0, 100)
        axes.set_xlabel("%")
        axes.axvline(metrics["mIoU"] * 100.0 if not math.isnan(metrics["mIoU"]) else 0, color="#1f77b4",
                     linestyle="--", linewidth=1, label="mIoU")
        axes.legend(loc="lower right", fontsize=8)
        axes.set_title(title or summary_line(metrics).split("  (")[0], fontsize=10)
        figure.tight_layout()
        save_figure(figure, path)
    finally:
        plt.close(figure)
    return path


def write_reports(metrics: dict, folder: str | Path, stem: str = "metrics", extra: dict | None = None) -> dict:
    """Write `<stem>.json`, `<stem>.csv` and `<stem>.png` into `folder`; returns {"json"|"csv"|"png": Path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "json": write_json(metrics, folder / f"{stem}.json", extra),
        "csv": write_csv(metrics, folder / f"{stem}.csv"),
        "png": plot_per_class(metrics, folder / f"{stem}.png"),
    }
