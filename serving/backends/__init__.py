"""Inference backends: where the pipeline's batches are run (ONNX Runtime in-process, or Triton)."""

from serving.backends.base import Backend, BackendUnavailable, ModelRunner

__all__ = ["Backend", "BackendUnavailable", "ModelRunner"]
