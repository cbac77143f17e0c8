"""Export stage 2, build the graph: the inference module traced into each requested file format.

Files are written into the export's private work directory; nothing here touches the model
repository. `slim` (onnxslim) runs after verification, on a graph already known to be right.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.errors import ExportError
from export.graph import export_module
from export.onnx_file import check_onnx, try_onnxslim, write_onnx
from export.options import ExportOptions
from export.torchscript_file import write_torchscript
from export.triton_config import DEFAULT_FILENAMES

Progress = Callable[[str], None]


@dataclass
class BuiltGraph:
    """What stage 2 wrote: format -> file, the checker's summary per format, the logits' (h, w)."""

    files: dict[str, Path]
    graphs: dict[str, Any]
    output_hw: tuple[int, int]
    seconds: dict[str, float] = field(default_factory=dict)


def build_graph(model: torch.nn.Module, work: Path, crop: tuple[int, int], options: ExportOptions,
                names: tuple[str, str], progress: Progress) -> BuiltGraph:
    """Trace `model` at `crop` and write each of `options.formats` into `work` (ONNX checked by onnx.checker)."""
    crop_h, crop_w = crop
    dtype = torch.float16 if options.fp16 else torch.float32
    # Batch 2 when allowed, so that nothing batch-1 specific (squeezes) is baked into the graph.
    example = torch.zeros(min(2, options.max_batch_size), 3, crop_h, crop_w, dtype=dtype)
    try:
        module = export_module(model, crop_h, crop_w, logits=options.logits, fp16=options.fp16)
        with torch.no_grad():
            out_hw = tuple(int(s) for s in module(example).shape[2:])
    except (ValueError, RuntimeError) as exc:
        # e.g. a compact PSANet whose attention map was sized for another crop (train_h vs test_h)
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the model does not run at the export crop {crop_h}x{crop_w} (test_h x test_w): {first}") from None
    built = BuiltGraph(files={}, graphs={}, output_hw=out_hw)
    for fmt in options.formats:
        progress(f"export {fmt}")
        tick = time.perf_counter()
        path = work / DEFAULT_FILENAMES[fmt]
        try:
            if fmt == "onnx":
                write_onnx(module, example, path, opset=options.opset, input_name=names[0], output_name=names[1])
                built.graphs["onnx"] = check_onnx(path)
            else:
                built.graphs["torchscript"] = write_torchscript(module, example, path)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"{fmt} export failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}") from exc
        built.files[fmt] = path
        built.seconds[f"export_{fmt}"] = time.perf_counter() - tick
    return built


def slim(built: BuiltGraph, options: ExportOptions, probe: np.ndarray) -> dict[str, Any]:
    """onnxslim on the verified ONNX file, kept only when faster with equal outputs (export.onnx_file)."""
    outcome = try_onnxslim(built.files["onnx"], probe.astype(np.float16 if options.fp16 else np.float32))
    if outcome.get("kept"):
        built.graphs["onnx"] = check_onnx(built.files["onnx"])
    return outcome
