"""The training-curve PNG written next to the checkpoints (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from training.reports import save_figure

__all__ = ["plot_training_curves"]


def _series(history: Sequence[Mapping[str, float]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in history:
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            xs.append(int(row["epoch"]))
            ys.append(float(value))
    return xs, ys


def plot_training_curves(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Plot per-epoch loss, aux loss, learning rate and (when present) validation metrics.

    Args:
        history: one dict per finished epoch with "epoch" (from 1), "loss", "main_loss",
            "aux_loss", "lr" and optionally "val_loss", "mIoU", "mAcc", "aAcc" (in [0, 1]).
        path: where to write the PNG (its directory must exist).
    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    has_val = any(row.get("mIoU") is not None for row in history)
    fig, axes = plt.subplots(1, 3 if has_val else 2, figsize=(13 if has_val else 9, 3.6))
    loss_ax, lr_ax = axes[0], axes[1]
    for key, label in (("loss", "total"), ("main_loss", "main"), ("aux_loss", "aux"), ("val_loss", "validation")):
        xs, ys = _series(history, key)
        if xs:
            loss_ax.plot(xs, ys, marker="o", markersize=3, label=label)
    loss_ax.set(title="loss", xlabel="epoch")
    loss_ax.legend()
    xs, ys = _series(history, "lr")
    lr_ax.plot(xs, ys, marker="o", markersize=3, color="tab:green")
    lr_ax.set(title="backbone lr (end of epoch)", xlabel="epoch")
    if has_val:
        val_ax = axes[2]
        for key in ("mIoU", "mAcc", "aAcc"):
            xs, ys = _series(history, key)
            if xs:
                val_ax.plot(xs, ys, marker="o", markersize=3, label=key)
        val_ax.set(title="validation", xlabel="epoch", ylim=(0.0, 1.0))
        val_ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
