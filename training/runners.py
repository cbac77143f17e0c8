"""A PyTorch model as the inference pipeline's `Runner` (numpy windows in, numpy logits out).

`sceneparse test` drives `serving.pipeline` with this runner, so evaluation and the gateway share
one implementation of the test protocol; only the network differs (eager PyTorch here, ONNX
Runtime or Triton there).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

_AUTOCAST_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _logits_of(output) -> torch.Tensor:
    """The main logits of whatever the model returns (tensor, (main, aux) tuple, or {"out": ...})."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("out"), torch.Tensor):
        return output["out"]
    raise TypeError(f"the model returned {type(output).__name__}; expected a logits tensor")


class TorchRunner:
    """Runs a segmentation model on normalised windows, as `serving.pipeline.Runner` requires.

    Args:
        model: an nn.Module mapping float32 (N, 3, h, w) to logits (N, K, h', w'); it is moved to
            `device` and put in eval mode.
        device: "cpu", "cuda", "cuda:1", ... or a torch.device.
        max_batch_size: the most windows per forward pass (the pipeline batches windows, flips and
            scales together up to this).
        amp: None, "bf16" or "fp16": autocast on CUDA (ignored on CPU); logits come back float32.
        channels_last: run the model in channels_last memory format (faster convolutions on CUDA).
    Call:
        float32 numpy (N, 3, h, w), 1 <= N <= max_batch_size -> float32 numpy logits (N, K, h, w),
        upsampled to the window size with align_corners=True (as the original) when the model's
        output is smaller.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device = "cpu",
        max_batch_size: int = 4,
        amp: str | None = None,
        channels_last: bool = False,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if amp not in _AUTOCAST_DTYPES:
            raise ValueError(f"amp must be one of {list(_AUTOCAST_DTYPES)}, got {amp!r}")
        self.device = torch.device(device)
        self.max_batch_size = int(max_batch_size)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.autocast_dtype = _AUTOCAST_DTYPES[amp] if self.device.type == "cuda" else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a (N, 3, h, w) batch, got shape {batch.shape}")
        if not 1 <= batch.shape[0] <= self.max_batch_size:
            raise ValueError(f"batch of {batch.shape[0]} windows; this runner takes 1..{self.max_batch_size}")
        height, width = batch.shape[2:]
        autocast = (
            torch.autocast("cuda", dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            inputs = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            inputs = inputs.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            logits = _logits_of(self.model(inputs)).float()
            if logits.shape[2:] != (height, width):
                # Upsampling here, on the model's device, is cheaper than in the numpy pipeline.
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=True)
        return logits.cpu().numpy()
