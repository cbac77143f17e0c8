"""Turn a trained segmentation network into the module that gets exported.

- eval mode, no aux head (the caller builds the model with aux=False);
- `logits`: "crop" keeps the original zoom to the input size inside the graph (zoom_factor 8),
  "feature" emits the stride-8 logits (zoom_factor 1) and leaves the bilinear, corner-aligned
  upsampling to the serving pipeline, which does exactly what the graph would have done;
- adaptive average pooling becomes two constant matrix products (see FixedAdaptiveAvgPool2d):
  ONNX's exporter only handles adaptive pooling whose bins divide the feature size, and a fixed
  crop makes the feature size a constant, so the exact PyTorch bin boundaries can be baked in;
- BatchNorm folded into the convolution that feeds it, in float32 (a pair is fused only when a
  forward pass shows the BN reading exactly that convolution's output);
- fp16: weights and activations in half precision (input and output tensors are float16 too),
  converted after folding so the folded weights are rounded once.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

LOGITS_CHOICES = ("crop", "feature")


def adaptive_pool_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """(out_size, in_size) float32 averaging matrix with PyTorch's adaptive-pool bin boundaries.

    Row i averages inputs floor(i*in/out) .. ceil((i+1)*in/out)-1, as nn.AdaptiveAvgPool2d does.
    """
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = math.ceil((i + 1) * in_size / out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix.float()


class FixedAdaptiveAvgPool2d(nn.Module):
    """nn.AdaptiveAvgPool2d for one known input size: (N, C, H, W) -> (N, C, out_h, out_w).

    Computed as A_h @ x @ A_w^T with constant averaging matrices, which ONNX expresses as two
    MatMuls for any bin count; it only accepts the input size it was built for.
    """

    def __init__(self, output_size: tuple[int, int], input_size: tuple[int, int]):
        super().__init__()
        self.output_size = tuple(int(s) for s in output_size)
        self.input_size = tuple(int(s) for s in input_size)
        self.register_buffer("rows", adaptive_pool_matrix(self.output_size[0], self.input_size[0]))
        self.register_buffer("cols_t", adaptive_pool_matrix(self.output_size[1], self.input_size[1]).t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols_t)


def _replace_module(root: nn.Module, dotted_name: str, new: nn.Module) -> None:
    parent_name, _, child = dotted_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


@torch.no_grad()
def fix_adaptive_pooling(model: nn.Module, example: torch.Tensor) -> int:
    """Replace every nn.AdaptiveAvgPool2d in `model` (in place) by its fixed-size equivalent.

    `example` is one input batch at the export size; a forward pass records each pool's input
    size. Returns the number of modules replaced.
    """
    pools = {name: module for name, module in model.named_modules() if isinstance(module, nn.AdaptiveAvgPool2d)}
    if not pools:
        return 0
    seen: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    hooks = []
    for name, module in pools.items():
        def record(mod, inputs, output, name=name):
            seen[name] = (tuple(inputs[0].shape[-2:]), tuple(output.shape[-2:]))
        hooks.append(module.register_forward_hook(record))
    try:
        model(example)
    finally:
        for hook in hooks:
            hook.remove()
    for name, (in_size, out_size) in seen.items():
        reference = pools[name]
        fixed = FixedAdaptiveAvgPool2d(out_size, in_size).to(example.device)
        _replace_module(model, name, fixed)
        del reference
    return len(seen)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> int:
    """Fold every eval-mode BatchNorm2d into the Conv2d whose output it normalises (in place).

    A forward pass on `example` records which tensor each Conv2d returned and which tensor each
    BatchNorm2d read; a BN reading exactly one conv's output (and that conv feeding no other BN)
    is fused into it with torch.nn.utils.fusion.fuse_conv_bn_eval and becomes nn.Identity. The
    export's parity check against the untouched model guards the rest. Returns the pairs folded.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    names = {module: name for name, module in model.named_modules()}
    conv_outputs: dict[int, tuple[str, torch.Tensor]] = {}  # the tensors are kept so ids stay unique
    pairs: dict[str, list[str]] = {}
    hooks = []

    def conv_done(module, args, output):
        conv_outputs[id(output)] = (names[module], output)

    def bn_starts(module, args):
        source = conv_outputs.get(id(args[0]))
        if source is not None:
            pairs.setdefault(source[0], []).append(names[module])

    for module in names:
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv_done))
        elif isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(bn_starts))
    try:
        model(example)
    finally:
        for hook in hooks:
            hook.remove()
        conv_outputs.clear()
    modules = dict(model.named_modules())
    folded = 0
    for conv_name, bn_names in pairs.items():
        norm = modules[bn_names[0]]
        if len(bn_names) != 1 or norm.training or not norm.track_running_stats:
            continue
        _replace_module(model, conv_name, fuse_conv_bn_eval(modules[conv_name], norm))
        _replace_module(model, bn_names[0], nn.Identity())
        folded += 1
    return folded


def export_module(
    model: nn.Module,
    crop_h: int,
    crop_w: int,
    logits: str = "feature",
    fp16: bool = False,
) -> nn.Module:
    """A copy of `model` ready for tracing: eval, fixed pooling, chosen output size, dtype.

    Args:
        model: a SegmentationNet (PSPNet/PSANet) built without its aux head.
        crop_h, crop_w: the export input size (8k+1 each).
        logits: "crop" (logits at the crop size) or "feature" (at stride 8, (crop-1)/8+1).
        fp16: convert to half precision.
    Returns:
        nn.Module mapping float (N, 3, crop_h, crop_w) -> logits (N, C, out_h, out_w).
    """
    if logits not in LOGITS_CHOICES:
        raise ValueError(f"logits must be one of {LOGITS_CHOICES}, got {logits!r}")
    module = copy.deepcopy(model).float().eval()
    if getattr(module, "aux", None) is not None:
        module.aux = None  # deep supervision only; never part of an inference graph
    if hasattr(module, "zoom_factor"):
        module.zoom_factor = 8 if logits == "crop" else 1
    example = torch.zeros(1, 3, crop_h, crop_w)
    fix_adaptive_pooling(module, example)
    fold_batchnorm(module, example)
    if fp16:
        module = module.half()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module

