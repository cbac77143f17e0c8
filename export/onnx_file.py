"""Write, check, run and (optionally) slim an ONNX model.

The export uses torch.onnx's TorchScript-based exporter (`dynamo=False`): it needs no extra
package (the dynamo exporter needs onnxscript), it is fast, and in eval mode its ONNX peephole
pass folds every BatchNorm into the preceding convolution (`graph_summary` proves it: no
BatchNormalization node is left). Its deprecation warning is silenced here, not ignored: the
torch pin (<= 2.14.1) still ships it.

Only the batch axis is dynamic. The spatial size is fixed at the crop: PSANet's attention maps
are built for one feature size, and adaptive pooling in PSPNet is baked into constant matrices
for one feature size (see export.graph).
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch


def write_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int = 17,
    input_name: str = "input",
    output_name: str = "logits",
) -> None:
    """Export `module` on `example` (N, 3, H, W) to `path` with a dynamic batch axis."""
    with warnings.catch_warnings():
        # Shape checks in the model's forward and the exporter's own deprecation notice.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            export_params=True,
            opset_version=opset,
            do_constant_folding=True,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )


def check_onnx(path: Path) -> dict[str, Any]:
    """Run onnx.checker on the file and summarise the graph: node count, op histogram, opset, size."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    return graph_summary(model, path)


def graph_summary(model, path: Path | None = None) -> dict[str, Any]:
    """Node count, op-type histogram, BatchNormalization count and opset of an onnx ModelProto."""
    ops = Counter(node.op_type for node in model.graph.node)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    summary = {
        "nodes": int(sum(ops.values())),
        "batchnorm_nodes": int(ops.get("BatchNormalization", 0)),
        "ops": dict(sorted(ops.items())),
        "opset": int(opset),
    }
    if path is not None:
        summary["bytes"] = Path(path).stat().st_size
    return summary


class OrtRunner:
    """An ONNX Runtime CPU session as a callable: (N, 3, H, W) array -> logits array."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0]


def median_latency(runner, batch: np.ndarray, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of `repeats` calls of runner(batch) after `warmup` calls."""
    for _ in range(warmup):
        runner(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def try_onnxslim(
    path: Path,
    probe: np.ndarray,
    threads: int | None = None,
    repeats: int = 3,
    min_gain: float = 0.03,
    atol: float = 1e-5,
) -> dict[str, Any]:
    """Slim `path` with onnxslim and keep the result only if it is faster and gives the same outputs.

    The slimmed model replaces `path` when it beats the original's ORT latency on `probe` by at least
    `min_gain` (a fraction) in each of three interleaved rounds (median of `repeats` calls each), and
    its outputs stay within `atol` with equal argmax.
    Returns the figures: {"available", "kept", "latency_s": {...}, "nodes": {...}, "max_abs_delta", "reason"}.
    """
    try:
        import onnxslim
    except ImportError:
        return {"available": False, "kept": False, "reason": "onnxslim is not installed"}
    import onnx

    slim_path = path.with_name(path.stem + ".slim.onnx")
    report: dict[str, Any] = {"available": True, "kept": False, "version": getattr(onnxslim, "__version__", "")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slimmed = onnxslim.slim(onnx.load(str(path)))
        onnx.save(slimmed, str(slim_path))
        onnx.checker.check_model(str(slim_path))
        original, candidate = OrtRunner(path, threads), OrtRunner(slim_path, threads)
        expected, got = original(probe).astype(np.float32), candidate(probe).astype(np.float32)
        delta = float(np.abs(expected - got).max())
        same_argmax = bool((expected.argmax(1) == got.argmax(1)).all())
        # Interleaved rounds, so that load from other processes hits both alike; the slim model must
        # win every round by min_gain, not just on average.
        base, slim = [], []
        for _ in range(3):
            base.append(median_latency(original, probe, repeats=repeats))
            slim.append(median_latency(candidate, probe, repeats=repeats))
        base_s, slim_s = float(np.median(base)), float(np.median(slim))
        gain = min(1.0 - s / b for b, s in zip(base, slim, strict=True)) if min(base) > 0 else 0.0
        report.update(
            latency_s={"original": base_s, "slim": slim_s},
            gain=gain,
            nodes={"original": len(onnx.load(str(path), load_external_data=False).graph.node),
                   "slim": len(slimmed.graph.node)},
            max_abs_delta=delta,
        )
        if delta > atol or not same_argmax:
            report["reason"] = f"outputs changed (max |delta| {delta:.3g})"
        elif gain < min_gain:
            report["reason"] = (f"no measurable gain (median {100 * (1 - slim_s / base_s):+.1f}%, worst round "
                                f"{100 * gain:+.1f}% < {100 * min_gain:.0f}%)")
        else:
            del original, candidate
            slim_path.replace(path)
            report["kept"], report["reason"] = True, f"{100 * (1 - slim_s / base_s):.1f}% faster (median)"
    except Exception as exc:  # slimming is an optimisation: never fail an export over it
        report["reason"] = f"onnxslim failed: {type(exc).__name__}: {exc}"
    finally:
        slim_path.unlink(missing_ok=True)
    return report
