"""Loading weights into PSPNet/PSANet: whole-model checkpoints and ImageNet backbone files.

Whole-model files come in three shapes, all read with ``torch.load(weights_only=True)``:
  * an original semseg release: ``{"state_dict": {"module.layer0.0.weight": ..., ...}, "epoch": ...}``
    (saved through DataParallel/DDP, hence the ``module.`` prefix);
  * a plain state dict (``{"layer0.0.weight": tensor, ...}``), with or without the prefix;
  * a sceneparse training checkpoint: ``state_dict`` in the original layout plus optimizer, epoch,
    config and metrics.
Every key of the model must be matched by name and shape. The aux head's keys are optional (ignored
when the model has no aux head; tolerated missing when it has one, unless ``strict_aux``), and so are
BatchNorm ``num_batches_tracked`` counters (older PyTorch did not save them). Anything else at fault is
reported in one :class:`CheckpointError` that lists every key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "load_backbone_weights",
    "load_checkpoint",
    "read_state_dict",
]

_PREFIX = "module."
_BACKBONE_STAGES = ("layer0.", "layer1.", "layer2.", "layer3.", "layer4.")
# ImageNet deep-stem file key -> position in our layer0 Sequential
_DEEP_STEM_KEYS = {
    "conv1": "layer0.0",
    "bn1": "layer0.1",
    "conv2": "layer0.3",
    "bn2": "layer0.4",
    "conv3": "layer0.6",
    "bn3": "layer0.7",
}
_TORCHVISION_STEM_KEYS = {"conv1": "layer0.0", "bn1": "layer0.1"}


class CheckpointError(ValueError):
    """A weights file that cannot be read, or whose keys do not fit the model.

    Attributes:
        path: the file.
        problems: one line per fault (``missing: key``, ``unexpected: key``, ``shape: key ...``).
    """

    def __init__(self, path: str | os.PathLike, summary: str, problems: list[str] | None = None) -> None:
        self.path = os.fspath(path)
        self.problems = list(problems or [])
        message = f"{self.path}: {summary}"
        if self.problems:
            message += "\n  " + "\n  ".join(self.problems)
        super().__init__(message)


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` did.

    Attributes:
        path: the file read.
        skipped_keys: checkpoint keys not loaded on purpose (aux head keys for a model without aux).
        missing_optional_keys: model keys the file lacked but that may be absent (aux, BN counters).
        meta: the file's other top-level entries (epoch, optimizer, config, ...), empty for a plain state dict.
    """

    path: str
    skipped_keys: list[str] = field(default_factory=list)
    missing_optional_keys: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(exc).__name__}: {line[:limit]}"


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weights file into (state dict without ``module.`` prefixes, other top-level entries).

    Accepts ``{"state_dict": ...}`` (original release, sceneparse checkpoints), ``{"model": ...}``
    (torchvision reference scripts) and plain state dicts. Raises CheckpointError for a missing,
    truncated or non-checkpoint file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(path, "no such checkpoint file")
    if os.path.isdir(path):
        raise CheckpointError(path, "is a directory, not a checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({_first_line(exc)})") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a checkpoint dict or state dict")
    meta: dict[str, Any] = {}
    state = obj
    for container in ("state_dict", "model"):
        if isinstance(obj.get(container), Mapping):
            state = obj[container]
            meta = {k: v for k, v in obj.items() if k != container}
            break
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or not_tensors:
        shown = ", ".join(not_tensors[:8]) or "(empty)"
        raise CheckpointError(
            path,
            f"no state dict found: expected tensors under 'state_dict' or at top level, found non-tensors {shown}",
        )
    stripped = {(k[len(_PREFIX) :] if k.startswith(_PREFIX) else k): v for k, v in state.items()}
    return stripped, meta


def _is_optional_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_and_load(
    model: nn.Module,
    path: str,
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    optional_missing: set[str],
    what: str,
) -> list[str]:
    """Compare ``state`` with ``expected`` (name -> tensor), raise on any fault, then load; return optional misses."""
    problems = [f"missing: {k}" for k in expected if k not in state and k not in optional_missing]
    problems += [f"unexpected: {k}" for k in state if k not in expected]
    problems += [
        f"shape: {k} is {_shape(v)} in the file, {_shape(expected[k])} in the model"
        for k, v in state.items()
        if k in expected and _shape(v) != _shape(expected[k])
    ]
    if problems:
        raise CheckpointError(path, f"{what}: {len(problems)} key(s) at fault", problems)
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # guaranteed by the comparison above
    return sorted(k for k in expected if k not in state)


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, *, strict_aux: bool = False
) -> LoadedCheckpoint:
    """Load a whole-model checkpoint into ``model`` in place.

    Args:
        model: a PSPNet/PSANet (any module whose state dict uses the original names).
        path: an original release, a plain state dict or a sceneparse checkpoint (see module docstring).
        strict_aux: also require the aux head's keys when the model has an aux head.

    Returns:
        LoadedCheckpoint with the skipped/optionally-missing keys and the file's other entries.

    Raises:
        CheckpointError: unreadable file, or one listing every missing, unexpected and mis-shaped key.
    """
    path = os.fspath(path)
    state, meta = read_state_dict(path)
    expected = model.state_dict()
    model_has_aux = any(k.startswith("aux.") for k in expected)
    skipped = sorted(k for k in state if k.startswith("aux.") and not model_has_aux)
    state = {k: v for k, v in state.items() if k not in skipped}
    optional = {k for k in expected if _is_optional_counter(k) or (k.startswith("aux.") and not strict_aux)}
    name = type(model).__name__
    missing_optional = _check_and_load(
        model, path, state, expected, optional, f"checkpoint does not fit the {name}"
    )
    return LoadedCheckpoint(
        path=path, skipped_keys=skipped, missing_optional_keys=missing_optional, meta=meta
    )


def _stem_format(state: Mapping[str, torch.Tensor]) -> str:
    if any(k.startswith("layer0.") for k in state):
        return "sceneparse"
    conv1 = state.get("conv1.weight")
    if conv1 is None:
        return "unknown"
    if "conv2.weight" in state and "conv3.weight" in state and tuple(conv1.shape[-2:]) == (3, 3):
        return "deep"
    if tuple(conv1.shape[-2:]) == (7, 7):
        return "torchvision"
    return "unknown"


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Initialise the trunk (layer0..layer4) of ``model`` from an ImageNet ResNet weights file.

    The file is a (possibly ``module.``-prefixed, possibly ``state_dict``-wrapped) ResNet state dict in
    the original deep-stem format (``conv1``/``conv2``/``conv3`` 3x3 + ``bn1..3``), in torchvision's
    format (``conv1`` 7x7 + ``bn1``), or already in our ``layer0..layer4`` layout. ``fc.*`` and, for our
    layout, head keys are ignored. Nothing is downloaded.

    Returns:
        the sorted model keys that were loaded.

    Raises:
        CheckpointError: unreadable file, a stem format that does not match the model's ``deep_stem``,
        or one listing every missing, unexpected and mis-shaped trunk key.
    """
    path = os.fspath(path)
    state, _ = read_state_dict(path)
    model_deep = tuple(model.layer0[0].kernel_size) == (3, 3)
    stem = _stem_format(state)
    if stem == "unknown":
        raise CheckpointError(
            path, "does not look like ResNet ImageNet weights (no conv1.weight or layer0.* keys)"
        )
    if stem == "deep" and not model_deep:
        raise CheckpointError(
            path,
            "holds the deep stem (three 3x3 convs), but the model was built with deep_stem=False; set deep_stem: True",
        )
    if stem == "torchvision" and model_deep:
        raise CheckpointError(
            path,
            "holds torchvision's 7x7 stem, but the model was built with deep_stem=True; set deep_stem: False",
        )
    if stem == "sceneparse":
        mapped = {k: v for k, v in state.items() if k.startswith(_BACKBONE_STAGES)}
    else:
        renames = _DEEP_STEM_KEYS if stem == "deep" else _TORCHVISION_STEM_KEYS
        mapped = {}
        for key, value in state.items():
            if key.startswith("fc."):
                continue  # the ImageNet classifier has no place in a segmentation trunk
            head, _, rest = key.partition(".")
            mapped[f"{renames[head]}.{rest}" if head in renames else key] = value
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(_BACKBONE_STAGES)}
    optional = {k for k in expected if _is_optional_counter(k)}
    _check_and_load(
        model, path, mapped, expected, optional, f"backbone weights ({stem} format) do not fit the trunk"
    )
    return sorted(mapped)
