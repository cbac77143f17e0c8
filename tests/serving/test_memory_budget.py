"""The device-memory estimate from an ONNX graph (used for the 4 GB budget in docs/serving.md)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from serving import memory_budget


def test_estimate_counts_weights_and_scales_with_the_batch(gateway_source_repository, psp_model_name, capsys):
    repository, name = gateway_source_repository, psp_model_name
    path = repository.model_file(name, repository.served_version(name))
    meta = repository.read_metadata(name)
    weights = sum(numpy_helper.to_array(init).nbytes for init in onnx.load(str(path)).graph.initializer)
    one, four = memory_budget.estimate(path, 1), memory_budget.estimate(path, 4)
    assert one.weight_bytes == four.weight_bytes == weights
    assert one.unknown_shapes == 0
    logits_bytes = meta.num_classes * meta.crop_h * meta.crop_w * np.dtype(np.float32).itemsize
    # The logits at the crop size are among the live tensors at the peak; activations grow with the batch.
    assert one.peak_activation_bytes >= logits_bytes
    assert 3.5 * one.peak_activation_bytes <= four.peak_activation_bytes <= 4.5 * one.peak_activation_bytes
    assert memory_budget.main([str(path), "--batch", "1", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[1].split()[0] == "1" and lines[2].split()[0] == "2"
    assert memory_budget.main([str(path) + ".missing"]) == 2
