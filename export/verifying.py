"""Export stage 3, verify: the exported files against eager fp32 PyTorch (export.verify's gate).

Refuses (VerificationError, nothing published) when any file misses the gate. A stride-8
("feature") export is also checked through the serving pipeline's own zoom, since that is what
the gateway will apply to its logits.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from export.building import BuiltGraph
from export.errors import VerificationError
from export.onnx_file import OrtRunner
from export.options import ExportOptions
from export.torchscript_file import TorchScriptRunner
from export.verify import (
    FP16_MIN_ARGMAX_AGREEMENT,
    compare_logits,
    measure_parity,
    probe_inputs,
    require_parity,
)


class EagerReference:
    """Eager fp32 PyTorch: the original module (adaptive pooling untouched) with the chosen zoom."""

    def __init__(self, model: torch.nn.Module, logits: str):
        self.module = copy.deepcopy(model).float().eval()
        self.module.zoom_factor = 8 if logits == "crop" else 1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()


def verify_graph(model: torch.nn.Module, built: BuiltGraph, crop: tuple[int, int], options: ExportOptions,
                 mean_std: tuple[list[float], list[float]]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Measure every file of `built` against eager PyTorch; returns (parity figures, the probe inputs).

    Raises VerificationError when a file misses the gate.
    """
    reference = EagerReference(model, options.logits)
    inputs = probe_inputs(crop[0], crop[1], options.max_batch_size, *mean_std, seed=options.seed)
    runners: dict[str, Any] = {}
    if "onnx" in built.files:
        runners["onnxruntime"] = OrtRunner(built.files["onnx"])
    if "torchscript" in built.files:
        runners["torchscript"] = TorchScriptRunner(built.files["torchscript"])
    parity = measure_parity(reference, runners, inputs, precision="fp16" if options.fp16 else "fp32")
    require_parity(parity)
    if options.logits == "feature":
        first = next(iter(runners.values()))
        parity["pipeline_upsample"] = _pipeline_upsample_parity(
            reference, first, inputs, crop, np.float16 if options.fp16 else np.float32)
        _require_upsample_parity(parity["pipeline_upsample"], options.fp16)
    parity["graph"] = built.graphs
    return parity, inputs


def _pipeline_upsample_parity(reference: EagerReference, runner, inputs: Mapping[str, np.ndarray],
                              crop: tuple[int, int], dtype) -> dict[str, Any]:
    """Stride-8 export: the pipeline's numpy zoom of the exported logits vs PyTorch's in-graph zoom."""
    from serving.pipeline import resize_bilinear

    cases = {}
    for input_name, batch in inputs.items():
        feature = torch.from_numpy(reference(batch))
        expected = F.interpolate(feature, size=crop, mode="bilinear", align_corners=True).numpy()
        got = np.asarray(runner(batch.astype(dtype)), dtype=np.float32)
        got = resize_bilinear(got.transpose(2, 3, 0, 1), crop, align_corners=True).transpose(2, 3, 0, 1)
        cases[input_name] = compare_logits(expected, np.ascontiguousarray(got))
    return {
        "max_abs_delta": max(c["max_abs_delta"] for c in cases.values()),
        "tolerance_used": max(c["tolerance_used"] for c in cases.values()),
        "argmax_agreement": min(c["argmax_agreement"] for c in cases.values()),
        "decisive_agreement": min(c["decisive_agreement"] for c in cases.values()),
        "cases": cases,
    }


def _require_upsample_parity(upsample: Mapping[str, Any], fp16: bool) -> None:
    """The same gate as the graph's: the gateway's masks of a stride-8 export must be PyTorch's."""
    if fp16:
        passed = upsample["argmax_agreement"] >= FP16_MIN_ARGMAX_AGREEMENT
    else:
        passed = upsample["tolerance_used"] <= 1.0 and upsample["decisive_agreement"] == 1.0
    if not passed:
        raise VerificationError(
            f"verification failed ({'fp16' if fp16 else 'fp32'}): the serving pipeline's zoom of the stride-8 "
            f"logits differs from PyTorch's in-graph zoom: max |delta| {upsample['max_abs_delta']:.3g}, argmax "
            f"agreement {100 * upsample['argmax_agreement']:.3f}%; nothing was published")
