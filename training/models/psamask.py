"""The PSA mask op in plain PyTorch: per-position attention windows -> a dense position-to-position map.

PSANet (Zhao et al., ECCV 2018, https://hszhao.github.io/papers/eccv18_psanet.pdf) predicts, at each
feature position p = (h, w), a window of mask_h x mask_w attention weights centred on p. The original
release scattered those windows into an (H*W) x (H*W) map with a compiled C++/CUDA op ("psamask").
Its semantics, with half = (mask - 1) // 2 and the window index (i, j):

    collect    (psa_type 0): out[n, (h + i - half_h) * W + (w + j - half_w), h * W + w] = mask[n, i * mask_w + j, h, w]
    distribute (psa_type 1): out[n, h * W + w, (h + i - half_h) * W + (w + j - half_w)] = mask[n, i * mask_w + j, h, w]

for every window cell that falls inside the feature map; all other entries are zero. The result is
returned as (N, H*W, H, W). Here the same op is one ``index_select`` from the (zero-padded) input with
an index computed from the sizes alone: differentiable (each input value lands in at most one output
place, so the gradient is the original's backward), no Python loop over pixels, any device, traceable,
and exportable to ONNX (a Gather with a constant index) for a fixed feature size.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["COLLECT", "DISTRIBUTE", "PSAMask", "psa_mask", "psa_mask_index"]

COLLECT = 0
DISTRIBUTE = 1


def psa_mask_index(
    feature_h: int,
    feature_w: int,
    mask_h: int,
    mask_w: int,
    psa_type: int,
    device: torch.device | None = None,
) -> torch.Tensor:
    """The gather index of the op: int64 tensor (H*W * H*W,).

    Entry ``r * H*W + c`` of the output map (row r, column c) reads element ``index[r*H*W + c]`` of the
    input flattened as (mask_h*mask_w + 1, H*W), whose last row is zeros: ``channel * H*W + position``.
    """
    hw = feature_h * feature_w
    half_h = (mask_h - 1) // 2
    half_w = (mask_w - 1) // 2
    # The output map is laid out (qh, qw, ph, pw) for collect (row q = the other position, column p =
    # the attending one) and (ph, pw, qh, qw) for distribute. Everything is separable in h and w, so the
    # index is one broadcast sum of an h-part and a w-part, and only the final tensor is full size.
    q_h, p_h = (slice(None), None, None, None), (None, None, slice(None), None)
    q_w, p_w = (None, slice(None), None, None), (None, None, None, slice(None))
    if psa_type == DISTRIBUTE:
        q_h, p_h, q_w, p_w = p_h, q_h, p_w, q_w
    rows_h = torch.arange(feature_h, device=device)
    rows_w = torch.arange(feature_w, device=device)
    # window cell (i, j) through which the attending position p sees q: i = qh - ph + half_h
    i = rows_h[q_h] - rows_h[p_h] + half_h
    j = rows_w[q_w] - rows_w[p_w] + half_w
    zero_element = mask_h * mask_w * hw  # first element of the zero row appended after the last channel
    # element read: channel (i * mask_w + j) at position p = ph * W + pw, in a (channels, H*W) layout;
    # a part outside the window is pushed to zero_element, so any sum involving it clamps back to it
    # (every in-window sum is below zero_element). Separable selects are ~5x cheaper than a full-size one.
    part_h = torch.where((i >= 0) & (i < mask_h), i * (mask_w * hw) + rows_h[p_h] * feature_w, zero_element)
    part_w = torch.where((j >= 0) & (j < mask_w), j * hw + rows_w[p_w], zero_element)
    index = (part_h + part_w).clamp(max=zero_element)
    return index.reshape(-1)


def psa_mask(mask: torch.Tensor, psa_type: int, mask_h: int, mask_w: int) -> torch.Tensor:
    """Scatter per-position attention windows into a dense map.

    Args:
        mask: float tensor (N, mask_h*mask_w, H, W); channel ``i*mask_w + j`` is window cell (i, j).
        psa_type: 0 (collect) or 1 (distribute).
        mask_h, mask_w: odd window sizes.

    Returns:
        float tensor (N, H*W, H, W) (see the module docstring for the layout), same dtype and device.
    """
    if psa_type not in (COLLECT, DISTRIBUTE):
        raise ValueError(f"psa_type must be 0 (collect) or 1 (distribute) for the mask op, got {psa_type}")
    if mask.dim() != 4:
        raise ValueError(f"psa_mask expects (N, mask_h*mask_w, H, W), got shape {tuple(mask.shape)}")
    n, channels, feature_h, feature_w = mask.shape
    if channels != mask_h * mask_w:
        raise ValueError(
            f"psa_mask: {channels} channels do not hold a {mask_h}x{mask_w} window ({mask_h * mask_w})"
        )
    hw = feature_h * feature_w
    index = psa_mask_index(feature_h, feature_w, mask_h, mask_w, psa_type, mask.device)
    flat = mask.reshape(n, channels, hw)
    padded = torch.cat([flat, flat.new_zeros(n, 1, hw)], dim=1).reshape(n, (channels + 1) * hw)
    return padded.index_select(1, index).reshape(n, hw, feature_h, feature_w)


class PSAMask(nn.Module):
    """Module form of :func:`psa_mask` with fixed direction and window size."""

    def __init__(self, psa_type: int, mask_h: int, mask_w: int) -> None:
        super().__init__()
        if psa_type not in (COLLECT, DISTRIBUTE):
            raise ValueError(f"psa_type must be 0 (collect) or 1 (distribute), got {psa_type}")
        self.psa_type = psa_type
        self.mask_h = mask_h
        self.mask_w = mask_w

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return psa_mask(mask, self.psa_type, self.mask_h, self.mask_w)

    def extra_repr(self) -> str:
        return f"psa_type={self.psa_type}, mask={self.mask_h}x{self.mask_w}"
