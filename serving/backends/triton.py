"""Triton Inference Server backend: the gateway's batches go to Triton over HTTP or gRPC.

The gateway and Triton read the same model repository: Triton loads `<name>/<version>/model.onnx`
with its onnxruntime backend (config.pbtxt written by export), the gateway reads
`sceneparse.json` for the pipeline and asks Triton for `<name>` version `<version>`.

Failure model: every call has a timeout. A connection failure (refused, reset, timed out) or a
model that Triton does not have ready raises `BackendUnavailable` (the gateway answers 503 and
/readyz is 503); the failed client is dropped and a fresh one is made by the next call, so the
gateway recovers by itself when Triton is back. Triton refusing a batch because its queue is full
(config.pbtxt's default_queue_policy) raises `BackendBusy` (503 + Retry-After, no retry, the client
kept). Tensors travel as binary data. torch-free.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from serving.backends.base import Backend, BackendBusy, BackendUnavailable, ModelRunner
from serving.repository import ModelMetadata, ModelRepository

PROTOCOLS = ("http", "grpc")
# Triton datatypes of the input tensor for ModelMetadata.precision (an int8 QDQ graph takes float32).
_DATATYPES = {"fp32": ("FP32", np.float32), "fp16": ("FP16", np.float16), "int8": ("FP32", np.float32)}

T = TypeVar("T")
# Messages of errors Triton itself returns with gRPC status UNAVAILABLE.
_TRITON_SAYS = re.compile(r"unknown model|not at ready state|is not ready|not found", re.IGNORECASE)
# What Triton answers (HTTP 503 / gRPC UNAVAILABLE) when config.pbtxt's default_queue_policy refuses
# a request: the queue is at max_queue_size, or the request waited past the queue timeout.
_TRITON_BUSY = re.compile(r"exceeds maximum queue size|request timeout expired", re.IGNORECASE)


class TritonError(RuntimeError):
    """Triton answered but refused the request (bad input, failed model load). Not retried."""


def split_url(url: str, protocol: str | None = None) -> tuple[str, str]:
    """`host:port`, `http://host:port` or `grpc://host:port` -> (host:port, protocol).

    A scheme in the URL wins over `protocol` (the default for scheme-less URLs, else "http"), so
    SCENEPARSE_TRITON_URL=grpc://triton:8001 means gRPC whatever the protocol setting says.
    """
    address, scheme = url.strip(), None
    if "://" in address:
        scheme, address = address.split("://", 1)
        if scheme.lower() in {"https", "grpcs"}:
            raise ValueError(f"Triton URL {url!r}: TLS is not supported; use http:// or grpc:// (or a TLS proxy)")
    address = address.rstrip("/")
    protocol = (scheme or protocol or "http").lower()
    if protocol not in PROTOCOLS:
        raise ValueError(f"Triton protocol must be 'http' or 'grpc', got {protocol!r}")
    if not address or ":" not in address:
        raise ValueError(f"Triton URL must be host:port (optionally with http:// or grpc://), got {url!r}")
    return address, protocol


class TritonBackend(Backend):
    """Runs model versions on a Triton server.

    Args:
        url: `host:port` of Triton's HTTP (default 8000) or gRPC (default 8001) endpoint; an
            `http://` or `grpc://` prefix is accepted.
        protocol: "http" or "grpc".
        timeout_s: limit for one inference request (network time, seconds).
        connect_timeout_s: limit for opening a connection.
        health_timeout_s: limit for the liveness / readiness probes (/readyz must answer fast).
        retries: extra attempts after a connection failure, each on a fresh client (covers a
            stale keep-alive connection after Triton restarted).
    """

    kind = "triton"

    def __init__(
        self,
        url: str,
        protocol: str | None = "http",
        timeout_s: float = 30.0,
        connect_timeout_s: float = 2.0,
        health_timeout_s: float = 2.0,
        retries: int = 1,
    ):
        self.address, self.protocol = split_url(url, protocol)
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.health_timeout_s = float(health_timeout_s)
        self.retries = max(0, int(retries))
        self._clients = _ClientPool(self.address, self.protocol, self.connect_timeout_s)

    @classmethod
    def from_settings(cls, settings: Any) -> TritonBackend:
        """From the gateway's Settings: resolved_triton_url, triton_protocol, triton_timeout."""
        url = getattr(settings, "resolved_triton_url", None) or settings.triton_url
        return cls(url, settings.triton_protocol, timeout_s=settings.triton_timeout)

    def __repr__(self) -> str:
        return f"TritonBackend({self.protocol}://{self.address})"

    # --- Backend ------------------------------------------------------------------------------
    def open(self, repository: ModelRepository, meta: ModelMetadata) -> TritonRunner:
        """A runner for `meta.name` version `meta.version`. Does not contact Triton, so the
        gateway can start (and report not-ready) while Triton is still coming up."""
        return TritonRunner(self, meta)

    def live(self) -> bool:
        """True when Triton answers its liveness probe within health_timeout_s."""
        try:
            return bool(self.call(lambda client, t: client.is_server_live(**t), self.health_timeout_s))
        except (BackendUnavailable, TritonError):
            return False

    def model_ready(self, meta: ModelMetadata) -> bool:
        """True when Triton reports model `meta.name` version `meta.version` READY."""
        name, version = meta.name, str(meta.version)
        try:
            return bool(self.call(lambda client, t: client.is_model_ready(name, version, **t), self.health_timeout_s))
        except (BackendUnavailable, TritonError):
            return False

    def close(self) -> None:
        self._clients.close_all()

    # --- model control (explicit mode) --------------------------------------------------------
    def load_model(self, name: str, timeout_s: float = 300.0) -> None:
        """Ask Triton (explicit model-control mode) to load or reload `name`.

        Triton re-reads config.pbtxt and the version directories, so a newly published version
        is served (and versions outside version_policy are unloaded). Raises BackendUnavailable
        when Triton is unreachable, TritonError when it refuses (e.g. the model fails to load).
        """
        self.call(lambda client, t: client.load_model(name, **t), timeout_s, retry=False, action=f"load {name!r}")

    def unload_model(self, name: str, timeout_s: float = 60.0) -> None:
        """Ask Triton (explicit model-control mode) to unload `name` (all versions)."""
        self.call(lambda client, t: client.unload_model(name, **t), timeout_s, retry=False, action=f"unload {name!r}")

    # --- plumbing -----------------------------------------------------------------------------
    def call(
        self,
        operation: Callable[[Any, dict[str, float]], T],
        timeout_s: float,
        retry: bool = True,
        action: str = "request",
    ) -> T:
        """Run `operation(client, timeout_kwargs)` with a client whose calls time out after timeout_s.

        Connection failures drop the client, are retried `retries` times on a fresh one when
        `retry`, then raise BackendUnavailable. Errors Triton itself returned raise TritonError.
        """
        from tritonclient.utils import InferenceServerException

        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(attempts):
            client, timeout_kwargs = self._clients.get(timeout_s)
            try:
                return operation(client, timeout_kwargs)
            except InferenceServerException as exc:
                if _TRITON_BUSY.search(_message(exc)):
                    # Load, not an outage: the connection is fine and retrying now would only queue again.
                    raise BackendBusy(f"Triton at {self.address} refused {action}: {_message(exc)}") from exc
                kind = _grpc_failure_kind(exc)
                if kind is None:
                    raise TritonError(f"Triton at {self.address} refused {action}: {_message(exc)}") from exc
                failure, timed_out = exc, kind == "timeout"
            except _network_errors() as exc:
                failure, timed_out = exc, isinstance(exc, _timeout_errors())
            self._clients.discard(client)
            # A refused or reset connection is worth one more try on a fresh client (a stale
            # keep-alive connection after a restart); a timeout is not: it would only double it.
            if timed_out or attempt + 1 == attempts:
                what = f"did not answer within {timeout_s:g}s" if timed_out else "is unreachable"
                raise BackendUnavailable(
                    f"Triton at {self.protocol}://{self.address} {what} ({action}): {_message(failure)}"
                ) from failure
        raise AssertionError("unreachable")  # pragma: no cover


class TritonRunner(ModelRunner):
    """One model version on Triton: `__call__` sends a batch and returns its logits."""

    def __init__(self, backend: TritonBackend, meta: ModelMetadata):
        super().__init__(meta)
        if meta.precision not in _DATATYPES:
            raise ValueError(f"model {meta.name!r} v{meta.version}: unsupported precision {meta.precision!r}")
        self.backend = backend
        self.datatype, self.dtype = _DATATYPES[meta.precision]

    def warm_up(self) -> None:
        """Nothing: Triton warms a version up itself (config.pbtxt's `model_warmup`) before it reports
        it ready, and the gateway swaps a version in only once Triton reports it ready."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, crop_h, crop_w), N <= max_batch_size -> float32 logits (N, C, h, w).

        Raises BackendUnavailable when Triton is unreachable or does not have this version ready.
        """
        meta = self.meta
        if batch.ndim != 4 or batch.shape[1:] != (3, meta.crop_h, meta.crop_w):
            raise ValueError(f"expected a (N, 3, {meta.crop_h}, {meta.crop_w}) batch, got {batch.shape}")
        if not 1 <= batch.shape[0] <= self.max_batch_size:
            raise ValueError(f"batch of {batch.shape[0]} outside 1..{self.max_batch_size} (max_batch_size)")
        data = np.ascontiguousarray(batch, dtype=self.dtype)
        protocol, version = self.backend.protocol, str(meta.version)

        def infer(client, timeout_kwargs):
            module = _client_module(protocol)
            tensor = module.InferInput(meta.input_name, list(data.shape), self.datatype)
            if protocol == "http":
                tensor.set_data_from_numpy(data, binary_data=True)
                output = module.InferRequestedOutput(meta.output_name, binary_data=True)
            else:
                tensor.set_data_from_numpy(data)
                output = module.InferRequestedOutput(meta.output_name)
            return client.infer(meta.name, [tensor], model_version=version, outputs=[output], **timeout_kwargs)

        try:
            result = self.backend.call(infer, self.backend.timeout_s, action=f"inference on {meta.name} v{version}")
        except TritonError as exc:
            # A model Triton does not have ready is an outage of this model, not a bad request.
            if not self.backend.model_ready(meta):
                raise BackendUnavailable(
                    f"model {meta.name!r} version {version} is not ready on Triton at {self.backend.address}"
                ) from exc
            raise
        logits = result.as_numpy(meta.output_name)
        if logits is None:
            raise TritonError(f"Triton's answer for {meta.name} v{version} has no output {meta.output_name!r}")
        if logits.ndim != 4 or logits.shape[:2] != (data.shape[0], meta.num_classes):
            raise TritonError(
                f"Triton returned logits of shape {logits.shape} for {meta.name} v{version}, "
                f"expected ({data.shape[0]}, {meta.num_classes}, h, w)"
            )
        return logits.astype(np.float32, copy=False)


# --- explicit model control, for the retraining pipeline ----------------------------------------
def load_model(url: str, name: str, protocol: str | None = "http", timeout_s: float = 300.0) -> None:
    """Ask the Triton at `url` (explicit model-control mode) to load / reload model `name`.

    Returns when Triton has loaded it. Raises BackendUnavailable (unreachable) or TritonError
    (refused, e.g. a broken model or a server in `none`/`poll` mode).
    """
    backend = TritonBackend(url, protocol)
    try:
        backend.load_model(name, timeout_s)
    finally:
        backend.close()


def unload_model(url: str, name: str, protocol: str | None = "http", timeout_s: float = 60.0) -> None:
    """Ask the Triton at `url` (explicit model-control mode) to unload model `name`."""
    backend = TritonBackend(url, protocol)
    try:
        backend.unload_model(name, timeout_s)
    finally:
        backend.close()


# --- clients -------------------------------------------------------------------------------------
class _ClientPool:
    """tritonclient clients, made lazily and dropped after a connection failure.

    gRPC clients are thread-safe: one per timeout (timeouts go with each call). HTTP clients
    (geventhttpclient) are not, and fix their network timeout at construction: one per thread
    and timeout.
    """

    def __init__(self, address: str, protocol: str, connect_timeout_s: float):
        self.address, self.protocol, self.connect_timeout_s = address, protocol, connect_timeout_s
        self._lock = threading.Lock()
        self._clients: dict[tuple[int, float], Any] = {}
        self._owners: dict[tuple[int, float], threading.Thread | None] = {}

    def get(self, timeout_s: float) -> tuple[Any, dict[str, float]]:
        if self.protocol == "grpc":
            key, kwargs, owner = (0, 0.0), {"client_timeout": timeout_s}, None
        else:
            key, kwargs, owner = (threading.get_ident(), timeout_s), {}, threading.current_thread()
        stale = None
        with self._lock:
            client = self._clients.get(key)
            if client is not None and self._owners.get(key) is not owner:
                # A thread id is reused once its thread has ended; that thread's HTTP client belongs
                # to its gevent hub, and using it from here fails ("cannot switch to a different thread").
                stale, client = client, None
            if client is None:
                client = self._clients[key] = self._make(timeout_s)
                self._owners[key] = owner
        if stale is not None:
            _close_quietly(stale)
        return client, kwargs

    def _make(self, timeout_s: float):
        module = _client_module(self.protocol)
        if self.protocol == "grpc":
            return module.InferenceServerClient(self.address, channel_args=_grpc_channel_args(module))
        return module.InferenceServerClient(
            self.address, connection_timeout=self.connect_timeout_s, network_timeout=timeout_s
        )

    def discard(self, client) -> None:
        """Forget a client after a connection failure; the next call makes a fresh one.

        A gRPC channel backs off reconnecting for up to minutes after failures; a new channel
        connects at once when Triton is back. The old one is not closed here: other threads may
        still be in a call on it, and it closes itself when the last of them lets go.
        """
        with self._lock:
            for key in [k for k, c in self._clients.items() if c is client]:
                del self._clients[key]
                self._owners.pop(key, None)
        if self.protocol == "http":
            _close_quietly(client)  # per-thread: nobody else is using it

    def close_all(self) -> None:
        with self._lock:
            clients, self._clients, self._owners = list(self._clients.values()), {}, {}
        for client in clients:
            _close_quietly(client)


def _grpc_channel_args(module) -> list[tuple[str, int]]:
    """tritonclient's default channel options, plus a fast reconnect after an outage.

    gRPC shares subchannels between channels of a process by default, so a fresh channel would
    inherit the old one's reconnect back-off (it grows to minutes); a local pool and a 1 s cap
    on the back-off make a restarted Triton usable within a second.
    """
    size = module.MAX_GRPC_MESSAGE_SIZE
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def _client_module(protocol: str):
    # Imported on first use: the gateway with the onnxruntime backend never needs tritonclient.
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def _close_quietly(client) -> None:
    # A broken client may fail to close; it is dropped anyway.
    with contextlib.suppress(Exception):
        client.close()


def _timeout_errors() -> tuple[type[BaseException], ...]:
    """What the HTTP client raises when Triton does not answer in time."""
    errors: tuple[type[BaseException], ...] = (TimeoutError, socket.timeout)
    try:  # geventhttpclient raises gevent's Timeout (a BaseException) when a read times out
        from gevent import Timeout

        errors += (Timeout,)
    except ImportError:  # pragma: no cover - gevent comes with tritonclient[http]
        pass
    return errors


def _network_errors() -> tuple[type[BaseException], ...]:
    """What the HTTP client raises when Triton is unreachable, went away mid-request, or is too slow.

    OSError: refused / reset / unreachable; HTTPException: geventhttpclient's
    HTTPConnectionClosed and parse errors of a half-sent answer from a dying server.
    """
    return (OSError, http.client.HTTPException, *_timeout_errors())


def _grpc_failure_kind(exc: Exception) -> str | None:
    """"timeout" / "unreachable" for gRPC transport failures, None for an answer from Triton."""
    status = str(exc.status() or "") if hasattr(exc, "status") else ""
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return "timeout"
    # Triton itself answers UNAVAILABLE for a model it has not loaded: that is not a lost server.
    if status in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED") and not _TRITON_SAYS.search(_message(exc)):
        return "unreachable"
    return None


def _message(exc: BaseException) -> str:
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return (message or type(exc).__name__).strip().splitlines()[0][:300]
