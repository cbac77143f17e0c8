"""Build the backend named in the settings; engines are imported only when chosen."""

from __future__ import annotations

from serving.backends.base import Backend
from serving.settings import Settings


def create_backend(settings: Settings) -> Backend:
    """An `OnnxRuntimeBackend` or a `TritonBackend` configured from `settings`."""
    if settings.backend == "onnxruntime":
        from serving.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            device=settings.ort_device,
            threads=settings.intra_op_threads,
            gpu_mem_limit_mb=settings.gpu_mem_limit_mb,
            device_id=settings.cuda_device_id,
            cpu_arena=settings.ort_cpu_arena,
        )
    if settings.backend == "triton":
        from serving.backends.triton import TritonBackend

        return TritonBackend.from_settings(settings)
    raise ValueError(f"unknown backend {settings.backend!r}: use onnxruntime or triton")
