"""The module that gets exported: fixed-size adaptive pooling, no aux head, chosen logits size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from export.graph import FixedAdaptiveAvgPool2d, adaptive_pool_matrix, export_module


@pytest.mark.parametrize(("in_hw", "out_hw"), [((9, 9), (6, 6)), ((5, 7), (3, 2)), ((60, 60), (6, 6)), ((4, 4), (1, 1)),
                                               ((3, 3), (6, 6))])
def test_fixed_pooling_equals_adaptive_pooling(in_hw, out_hw):
    x = torch.randn(2, 4, *in_hw)
    expected = nn.AdaptiveAvgPool2d(out_hw)(x)
    assert torch.allclose(FixedAdaptiveAvgPool2d(out_hw, in_hw)(x), expected, atol=1e-6)


def test_pool_matrix_rows_average_overlapping_bins():
    matrix = adaptive_pool_matrix(2, 5)  # PyTorch's bins for 5 -> 2: [0, 3) and [2, 5)
    assert torch.allclose(matrix.sum(1), torch.ones(2))
    assert (matrix[0, :3] > 0).all() and matrix[0, 3:].eq(0).all()
    assert matrix[1, :2].eq(0).all() and (matrix[1, 2:] > 0).all()


def test_export_module_is_an_equivalent_inference_graph(make_source):
    from training.models import build_model

    source = make_source("psp")
    model = build_model(source.config, aux=True)
    model.eval()
    module = export_module(model, 33, 33, logits="crop")
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in module.modules())
    assert module.aux is None and not module.training
    assert model.aux is not None  # the caller's model is left alone
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        assert torch.allclose(module(x), model(x), atol=1e-5)
        assert export_module(model, 33, 33, logits="feature")(x).shape == (2, 6, 5, 5)
        assert export_module(model, 33, 33, fp16=True).half()(x.half()).dtype == torch.float16
    with pytest.raises(ValueError, match="logits"):
        export_module(model, 33, 33, logits="half")
