"""The plain-PyTorch psamask op against a direct, loop-based definition of the original C++/CUDA op."""

from __future__ import annotations

import pytest
import torch

from training.models.psamask import COLLECT, DISTRIBUTE, PSAMask, psa_mask

# (feature_h, feature_w, mask_h, mask_w): windows larger than, smaller than and equal to the map,
# non-square on both sides.
SIZES = [(3, 4, 5, 7), (5, 6, 3, 3), (4, 4, 7, 7), (2, 3, 3, 5), (6, 5, 11, 9), (1, 1, 3, 3)]


def loop_psa_mask(mask: torch.Tensor, psa_type: int, mask_h: int, mask_w: int) -> torch.Tensor:
    """The op as the original defines it, one window cell at a time: (N, mh*mw, H, W) -> (N, H*W, H, W)."""
    n, _, feature_h, feature_w = mask.shape
    half_h, half_w = (mask_h - 1) // 2, (mask_w - 1) // 2
    out = torch.zeros(n, feature_h * feature_w, feature_h * feature_w, dtype=mask.dtype)
    for b in range(n):
        for h in range(feature_h):
            for w in range(feature_w):
                for i in range(mask_h):
                    for j in range(mask_w):
                        qh, qw = h + i - half_h, w + j - half_w
                        if not (0 <= qh < feature_h and 0 <= qw < feature_w):
                            continue
                        p, q = h * feature_w + w, qh * feature_w + qw
                        value = mask[b, i * mask_w + j, h, w]
                        if psa_type == COLLECT:
                            out[b, q, p] = value
                        else:
                            out[b, p, q] = value
    return out.view(n, feature_h * feature_w, feature_h, feature_w)


@pytest.mark.parametrize("psa_type", [COLLECT, DISTRIBUTE], ids=["collect", "distribute"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "f{}x{}-m{}x{}".format(*s))
def test_matches_loop_definition(psa_type, size):
    feature_h, feature_w, mask_h, mask_w = size
    torch.manual_seed(0)
    mask = torch.randn(2, mask_h * mask_w, feature_h, feature_w)
    expected = loop_psa_mask(mask, psa_type, mask_h, mask_w)
    got = psa_mask(mask, psa_type, mask_h, mask_w)
    assert got.shape == (2, feature_h * feature_w, feature_h, feature_w)
    assert torch.equal(got, expected)
    assert torch.equal(PSAMask(psa_type, mask_h, mask_w)(mask), expected)


def test_full_window_links_every_pair_through_its_own_cell():
    # With the window 2*side-1 every (source, target) pair is reached, each through a different window
    # cell of its target: all H*W x H*W entries are filled with distinct input values.
    mask = torch.arange(1, 7 * 9 * 4 * 5 + 1, dtype=torch.float32).view(1, 7 * 9, 4, 5)
    dense = psa_mask(mask, COLLECT, 7, 9).view(20, 20)
    assert (dense > 0).all()
    assert dense.unique().numel() == 400


def test_distribute_is_collect_transposed():
    mask = torch.randn(3, 25, 4, 6)
    collect = psa_mask(mask, COLLECT, 5, 5).view(3, 24, 24)
    distribute = psa_mask(mask, DISTRIBUTE, 5, 5).view(3, 24, 24)
    assert torch.equal(distribute, collect.transpose(1, 2))


@pytest.mark.parametrize("psa_type", [COLLECT, DISTRIBUTE], ids=["collect", "distribute"])
def test_gradients_flow_and_match_the_original_backward(psa_type):
    torch.manual_seed(1)
    mask = torch.randn(2, 15, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: psa_mask(m, psa_type, 3, 5), (mask,))
    upstream = torch.randn(2, 12, 3, 4, dtype=torch.float64)
    (psa_mask(mask, psa_type, 3, 5) * upstream).sum().backward()
    # The original backward copies each output gradient back to the window cell it came from, and
    # window cells outside the map get zero gradient: that is the loop definition's own gradient.
    reference = mask.detach().clone().requires_grad_(True)
    (loop_psa_mask(reference, psa_type, 3, 5) * upstream).sum().backward()
    assert torch.equal(mask.grad, reference.grad)
    assert (mask.grad != 0).any()


def test_runs_on_the_mask_dtype_and_keeps_it():
    mask = torch.randn(1, 9, 3, 3, dtype=torch.float64)
    assert psa_mask(mask, COLLECT, 3, 3).dtype == torch.float64


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="25 channels do not hold a 3x3 window"):
        psa_mask(torch.zeros(1, 25, 4, 4), COLLECT, 3, 3)
    with pytest.raises(ValueError, match="psa_type"):
        psa_mask(torch.zeros(1, 9, 4, 4), 2, 3, 3)
    with pytest.raises(ValueError, match="psa_type"):
        PSAMask(5, 3, 3)


def _original_psa_forward(psa, x: torch.Tensor) -> torch.Tensor:
    """The PSA module's forward written out step by step as the original defines it, on the loop op."""
    import torch.nn.functional as F

    def shrink(t):
        h, w = t.shape[2:]
        if psa.shrink_factor == 1:
            return t
        size = ((h - 1) // psa.shrink_factor + 1, (w - 1) // psa.shrink_factor + 1)
        return F.interpolate(t, size=size, mode="bilinear", align_corners=True)

    def attend(features, attention, direction):
        n, c, h, w = features.shape
        y = attention(features)
        if psa.compact:
            if direction == DISTRIBUTE:
                y = y.view(n, h * w, h * w).transpose(1, 2).reshape(n, h * w, h, w)
        else:
            y = loop_psa_mask(y, direction, psa.mask_h, psa.mask_w)
        if psa.psa_softmax:
            y = F.softmax(y, dim=1)
        return (
            torch.bmm(features.view(n, c, h * w), y.view(n, h * w, h * w)).view(n, c, h, w)
            / psa.normalization_factor
        )

    if psa.psa_type == 2:
        context = torch.cat(
            [
                attend(shrink(psa.reduce(x)), psa.attention, COLLECT),
                attend(shrink(psa.reduce_p(x)), psa.attention_p, DISTRIBUTE),
            ],
            1,
        )
    else:
        context = attend(shrink(psa.reduce(x)), psa.attention, psa.psa_type)
    context = psa.proj(context)
    if psa.shrink_factor != 1:
        h, w = context.shape[2:]
        size = ((h - 1) * psa.shrink_factor + 1, (w - 1) * psa.shrink_factor + 1)
        context = F.interpolate(context, size=size, mode="bilinear", align_corners=True)
    return torch.cat([x, context], 1)


@pytest.mark.parametrize(
    "psa_type, compact, shrink, mask, softmax",
    [
        (0, False, 2, (5, 3), True),
        (1, False, 2, (5, 3), True),
        (2, False, 2, (5, 5), True),
        (2, False, 1, (7, 9), False),
        (0, True, 2, (3, 4), True),
        (1, True, 2, (3, 4), True),
        (2, True, 1, (5, 7), True),
    ],
)
def test_psa_module_follows_the_original_forward(psa_type, compact, shrink, mask, softmax):
    from training.models.psanet import PSA

    torch.manual_seed(0)
    psa = PSA(16, 8, psa_type=psa_type, compact=compact, shrink_factor=shrink, mask_h=mask[0], mask_w=mask[1])
    psa.psa_softmax = softmax
    psa.normalization_factor = 2.0
    psa.eval()
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        assert torch.allclose(psa(x), _original_psa_forward(psa, x), atol=1e-6)
