"""Mixed precision from the config: `amp`, or the original's apex keys mapped onto native AMP.

The original trained with NVIDIA apex when `use_apex` was on (`amp.initialize(opt_level=...,
keep_batchnorm_fp32=..., loss_scale=...)`). Apex is not used here; its keys map onto PyTorch's
autocast and GradScaler instead of being ignored:

- `opt_level` O0: float32 (apex's O0), nothing changes. O1 (patched functions in fp16), O2 and O3
  (fp16 weights): autocast float16 with a GradScaler, which keeps the weights in float32 and runs
  each op in the precision autocast chooses; the closest native equivalent of all three.
- `loss_scale`: "dynamic" or None -> the GradScaler's dynamic scale; a number -> that scale, never
  grown (apex's static scale; an overflow still skips the step and halves it, GradScaler's rule).
- `keep_batchnorm_fp32`: autocast keeps BatchNorm's parameters and statistics in float32, which
  is what True asked for; False (fp16 BatchNorm) has no native counterpart and is not done.

An explicit `amp` (bf16 or fp16) wins over the apex keys.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

__all__ = ["APEX_OPT_LEVELS", "Precision", "resolve_precision"]

APEX_OPT_LEVELS = ("O0", "O1", "O2", "O3")
_NO_GROWTH = 2**31 - 1  # GradScaler's growth_interval that never comes: a fixed loss scale


@dataclass(frozen=True)
class Precision:
    """What to train in: `amp` None (float32), "bf16" or "fp16"; GradScaler keyword arguments
    (fp16 only); `note`: one line saying how apex keys were mapped (None when there were none)."""

    amp: str | None
    scaler_kwargs: dict[str, Any]
    note: str | None = None


def resolve_precision(cfg: Any) -> Precision:
    """The precision a config (a Config or a dict) asks for, from `amp` or else from the apex keys.

    Raises:
        ValueError: an `opt_level` apex did not have, or a `loss_scale` that is neither
            "dynamic", None nor a positive number.
    """
    amp = cfg.get("amp")
    use_apex = bool(cfg.get("use_apex", False))
    opt_level = cfg.get("opt_level") or "O0"
    loss_scale = cfg.get("loss_scale")
    if opt_level not in APEX_OPT_LEVELS:
        raise ValueError(f"config key opt_level must be one of {', '.join(APEX_OPT_LEVELS)}, got {opt_level!r}")
    dynamic = loss_scale is None or (isinstance(loss_scale, str) and loss_scale.lower() == "dynamic")
    if not dynamic and not (isinstance(loss_scale, numbers.Real) and not isinstance(loss_scale, bool)
                            and loss_scale > 0):
        raise ValueError(f"config key loss_scale must be 'dynamic' or a positive number, got {loss_scale!r}")
    if not use_apex:
        return Precision(amp, {})
    if amp:
        return Precision(amp, {}, f"use_apex True with amp {amp}: amp decides, opt_level {opt_level} is not used")
    if opt_level == "O0":
        return Precision(None, {}, "use_apex True, opt_level O0: float32, as apex's O0")
    scaler = {} if dynamic else {"init_scale": float(loss_scale), "growth_interval": _NO_GROWTH}
    scale = "dynamic loss scale" if dynamic else f"fixed loss scale {float(loss_scale):g}"
    return Precision("fp16", scaler,
                     f"use_apex True, opt_level {opt_level}: native AMP instead of apex (autocast float16 + "
                     f"GradScaler, {scale})")
