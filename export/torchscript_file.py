"""Write and run a TorchScript model for Triton's pytorch_libtorch backend.

The module is traced (the models' Python-level size checks run once at trace time, on the fixed
crop) and frozen: freezing inlines the weights and folds each BatchNorm into its convolution.
The batch axis stays dynamic: the traced graph reads it from the input's shape.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch


def write_torchscript(module: torch.nn.Module, example: torch.Tensor, path: Path) -> dict[str, int]:
    """Trace `module` on `example`, freeze it and save it to `path`; returns node counts."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings from the size checks
        traced = torch.jit.trace(module, (example,), check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
        # torch.jit.save/load warn that TorchScript is deprecated; Triton's libtorch backend still needs it.
        torch.jit.save(frozen, str(path))
    nodes = list(frozen.graph.nodes())
    return {
        "nodes": len(nodes),
        "batchnorm_nodes": sum(1 for n in nodes if n.kind() == "aten::batch_norm"),
    }


class TorchScriptRunner:
    """A saved TorchScript file as a callable: (N, 3, H, W) array -> logits array."""

    def __init__(self, path: Path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(batch))).numpy()
