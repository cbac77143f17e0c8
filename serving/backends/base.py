"""The backend interface the gateway and `sceneparse predict` program against.

A backend opens a `ModelRunner` for one published version; the runner is a
`serving.pipeline.Runner` (max_batch_size + __call__(batch) -> logits) that can be closed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from serving.repository import ModelMetadata, ModelRepository


class BackendUnavailable(RuntimeError):
    """The backend cannot run requests right now (e.g. Triton is down). The gateway answers 503."""


class BackendBusy(BackendUnavailable):
    """The backend refused the batch because its own queue is full (Triton's max_queue_size) or the
    batch waited there past its timeout: load, not an outage. The gateway answers 503 + Retry-After."""


class ModelRunner(ABC):
    """One loaded model version. Thread-safe: the gateway calls it from a worker pool."""

    def __init__(self, meta: ModelMetadata):
        self.meta = meta
        self.max_batch_size = meta.max_batch_size

    @abstractmethod
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, crop_h, crop_w), N <= max_batch_size -> float32 logits (N, C, h, w)."""

    def warm_up(self) -> None:
        """Run one batch of `max_batch_size` zero crops, so the first request finds the engine ready.

        ONNX Runtime plans memory and grows its arena on a session's first runs; a request after a
        reload would pay for that. The largest batch is the one a request uses, and the one that
        sizes the arena.
        """
        meta = self.meta
        self(np.zeros((self.max_batch_size, 3, meta.crop_h, meta.crop_w), dtype=np.float32))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model (sessions, connections)."""


class Backend(ABC):
    """A kind of inference engine; `kind` is the name used in settings and /v1/models."""

    kind: str = ""

    @abstractmethod
    def open(self, repository: ModelRepository, meta: ModelMetadata) -> ModelRunner:
        """Load version `meta.version` of model `meta.name` and return its runner."""

    def live(self) -> bool:
        """Whether the engine itself is reachable (always True in-process)."""
        return True

    def model_ready(self, meta: ModelMetadata) -> bool:
        """Whether this model version can serve requests now."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything the backend holds."""
