"""Softmax over the class axis of a logits batch, run by ONNX Runtime.

The pipeline needs a softmax of every window's logits at full crop resolution (the original test
protocol averages probabilities, not logits): for PSPNet with 150 classes at 473x473 that is 33.5 M
exponentials per window. numpy computes them on one core at about 5 ns each (0.18 s a window on
the 2-core AVX2 machines this was built on), ONNX Runtime with its vectorised kernel on all cores
in a fraction of that. The graph also turns the layout to (N, h, w, C), so that the stitching sums
and the final argmax run over contiguous class vectors.

Gateway, `sceneparse predict` and `sceneparse test` all get their probabilities from here, so their
label maps stay equal to the bit.

Memory: the output is written straight into an array of the caller's (I/O binding), so ONNX
Runtime's arena keeps only the transposed logits between the two nodes, and one call runs at a
time, so it keeps one batch's worth (at most the pipeline's BATCH_LOGITS_BYTES, 128 MiB) for the
life of the process. Returning the output through `run()` instead kept the output's buffer in the
arena too and copied it out (twice the retained memory, one more copy per batch); no arena at all
costs fresh pages for both tensors on every call, 4-5x the softmax's time (docs/serving.md).
"""

from __future__ import annotations

import os
import threading

import numpy as np

_lock = threading.Lock()
_run_lock = threading.Lock()
_session = None


def _model_bytes() -> bytes:
    from onnx import TensorProto, helper

    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", "c", "h", "w"])
    probabilities = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", "h", "w", "c"])
    nodes = [helper.make_node("Transpose", ["logits"], ["nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Softmax", ["nhwc"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(nodes, "channel_softmax", [logits], [probabilities])
    # IR 8 / opset 13: old enough for every onnxruntime that sceneparse admits.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _get_session():
    global _session
    with _lock:
        if _session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = _threads()
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            # Its threads stop spinning when a call ends: the model's next batch needs the cores.
            options.add_session_config_entry("session.force_spinning_stop", "1")
            _session = ort.InferenceSession(_model_bytes(), options, providers=["CPUExecutionProvider"])
        return _session


def channel_softmax_nhwc(logits: np.ndarray) -> np.ndarray:
    """(N, C, h, w) float32 logits -> (N, h, w, C) float32 softmax over C. Thread-safe."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    if logits.ndim != 4:
        raise ValueError(f"expected (N, C, h, w) logits, got shape {logits.shape}")
    n, c, h, w = logits.shape
    out = np.empty((n, h, w, c), dtype=np.float32)
    session = _get_session()
    binding = session.io_binding()
    binding.bind_cpu_input("logits", logits)
    binding.bind_output("probabilities", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
    with _run_lock:  # one at a time: the arena then holds one batch's transposed logits, not one per worker
        session.run_with_iobinding(binding)
    return out
