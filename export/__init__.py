"""Checkpoint -> ONNX / TorchScript, verified against eager PyTorch, published as a Triton model version.

    >>> from export import ExportOptions, export_checkpoint
    >>> result = export_checkpoint("training/config/ade20k/ade20k_pspnet50.yaml", "pspnet50.pth",
    ...                            "model_repository", ExportOptions(formats=("onnx", "torchscript")))
    >>> result.version, result.parity["worst"]

`sceneparse export` (export.cli) is the command-line front end; docs/export.md has the details.
"""

from export.errors import ExportError, VerificationError
from export.exporter import ExportResult, export_checkpoint
from export.options import DEFAULT_LOGITS, FORMATS, ExportOptions
from export.triton_config import TritonModelConfig, model_config_text

__all__ = [
    "DEFAULT_LOGITS",
    "FORMATS",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "TritonModelConfig",
    "VerificationError",
    "export_checkpoint",
    "model_config_text",
]
