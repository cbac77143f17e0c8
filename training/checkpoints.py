"""Training checkpoints: atomic writes, the original layout, RNG states, keep-last-N.

A checkpoint is a plain dict that `torch.load(path, weights_only=True)` reads:

    {"epoch": int (epochs completed), "iteration": int (optimizer steps taken),
     "state_dict": {"module.<original key>": tensor},  # as the original's DDP model saved it
     "optimizer": SGD state dict, "scaler": GradScaler state dict or None,
     "config": plain dict of the run's config, "metrics": {"history": [per-epoch dicts], ...},
     "rng": [per-rank RNG states, see `capture_rng_state`], "world_size": int,
     "format": "sceneparse-train-1"}

Names follow the original: `train_epoch_<N>.pth` every `save_freq` epochs, `final.pth` at the
end; `last.pth` always points at the newest state (resume from it).
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sceneparse.atomic import atomic_open

__all__ = [
    "CHECKPOINT_FORMAT",
    "EPOCH_CHECKPOINT",
    "TEMP_PREFIX",
    "atomic_save",
    "capture_rng_state",
    "epoch_checkpoint_path",
    "load_training_checkpoint",
    "prune_epoch_checkpoints",
    "remove_stale_temporaries",
    "restore_rng_state",
    "to_original_layout",
    "from_original_layout",
]

CHECKPOINT_FORMAT = "sceneparse-train-1"
EPOCH_CHECKPOINT = re.compile(r"^train_epoch_(\d+)\.pth$")
TEMP_PREFIX = ".tmp-"
DDP_PREFIX = "module."


def epoch_checkpoint_path(save_path: str | Path, epoch: int) -> Path:
    """`<save_path>/train_epoch_<epoch>.pth`, the original's name (epoch counted from 1)."""
    return Path(save_path) / f"train_epoch_{epoch}.pth"


def to_original_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Prefix keys with `module.` exactly as the original's DistributedDataParallel saves did."""
    return {k if k.startswith(DDP_PREFIX) else DDP_PREFIX + k: v.detach().cpu() for k, v in state_dict.items()}


def from_original_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the `module.` prefix so a bare (not DDP-wrapped) model can load the weights."""
    return {k[len(DDP_PREFIX) :] if k.startswith(DDP_PREFIX) else k: v for k, v in state_dict.items()}


def atomic_save(payload: Mapping[str, Any], path: str | Path) -> Path:
    """Write `payload` with torch.save so that `path` is either the old file or the complete new one
    (sceneparse.atomic: temporary file beside it, fsync, rename, fsync the folder). Returns the path.

    A killed run's temporary file is named `.tmp-<name>.*`: `remove_stale_temporaries` sweeps it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb", prefix=TEMP_PREFIX, suffix="") as handle:
        torch.save(dict(payload), handle)
    return path


def remove_stale_temporaries(save_path: str | Path) -> list[Path]:
    """Delete temporary files a killed run left in `save_path`; returns what was removed."""
    removed = []
    directory = Path(save_path)
    if directory.is_dir():
        for leftover in directory.glob(TEMP_PREFIX + "*"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed.append(leftover)
    return removed


def prune_epoch_checkpoints(save_path: str | Path, keep_last: int | None) -> list[Path]:
    """Keep only the newest `keep_last` `train_epoch_N.pth` files (None or <= 0 keeps all).

    Returns the deleted paths.
    """
    if not keep_last or keep_last <= 0:
        return []
    found = []
    for entry in Path(save_path).glob("train_epoch_*.pth"):
        match = EPOCH_CHECKPOINT.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry))
    found.sort()
    removed = []
    for _, entry in found[: max(0, len(found) - keep_last)]:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain types (safe for weights_only loading).

    Returns:
        {"python": {"version": int, "state": int64 tensor (625,), "gauss": float | None},
         "numpy": {"keys": uint32->int64 tensor (624,), "pos": int, "has_gauss": int, "gauss": float},
         "torch": uint8 tensor, "cuda": [uint8 tensor per device] ([] without CUDA)}
    """
    version, state, gauss = random.getstate()
    # The legacy global state is what data transforms draw from, so that is what must be saved.
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    if kind != "MT19937":
        raise ValueError(f"unsupported numpy bit generator {kind!r}")
    return {
        "python": {"version": int(version), "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": [s.cpu() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def restore_rng_state(rng: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state`: put back Python, numpy, torch (and CUDA) RNG states."""
    python = rng["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
    numpy_state = rng["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    torch.set_rng_state(rng["torch"])
    cuda_states = rng.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by training (CPU tensors, weights_only=True).

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not a training checkpoint (names the path and the missing keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, pickle with code objects, not a torch file...
        raise ValueError(f"{path}: cannot be read as a checkpoint ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    missing = [key for key in ("state_dict", "optimizer", "epoch") if key not in checkpoint]
    if missing:
        raise ValueError(f"{path}: not a resumable training checkpoint, missing keys {missing}")
    return checkpoint
