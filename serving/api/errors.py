"""Every error leaves the gateway as JSON `{"error": <code>, "detail": <message>}` with a fitting status.

Public answers carry no file paths, internal host names or library messages: a 5xx says what
kind of failure it was and gives an `incident` id; the full message goes to the log under that
id (and the admin-only `GET /v1/admin/status` shows the last load errors in full).
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.admission import RequestTooCostly, UploadsFull
from serving.backends.base import BackendBusy, BackendUnavailable
from serving.cancellation import RequestCancelled
from serving.imaging import ImageError
from serving.repository import ModelNotFoundError, RepositoryError
from serving.workers import DeadlineExceeded, QueueFull

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine-readable code and a human-readable detail."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


class BodyTooLarge(Exception):
    """The request body passed the configured limit (raised while it is being received)."""


class UploadStalled(Exception):
    """The client sent no byte of its body for `upload_idle_timeout` seconds."""


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def logged_incident(request: Request, what: str, exc: BaseException, with_traceback: bool = False) -> str:
    """Log `exc` in full under a fresh incident id and return the id (for the public answer)."""
    incident = uuid.uuid4().hex[:12]
    log.error("incident %s: %s on %s %s: %s: %s", incident, what, request.method, request.url.path,
              type(exc).__name__, exc, exc_info=exc if with_traceback else None)
    return incident


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(item) for item in error.get("loc", ()) if item not in {"query", "body"})
        parts.append(f"{location or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, retry_after: int, max_body_bytes: int,
                           upload_idle_timeout: float = 10.0) -> None:
    """Register the handlers that turn every known failure into the JSON error shape."""
    retry = {"Retry-After": str(retry_after)}

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(ImageError)
    async def _image_error(_: Request, exc: ImageError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail)

    @app.exception_handler(BodyTooLarge)
    async def _body_too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        # The rest of the body is never read: close the connection instead of draining it.
        return error_response(413, "body_too_large", f"the request body exceeds {max_body_bytes} bytes",
                              {"Connection": "close"})

    @app.exception_handler(UploadStalled)
    async def _upload_stalled(_: Request, exc: UploadStalled) -> JSONResponse:
        return error_response(408, "request_timeout", f"the upload sent nothing for {upload_idle_timeout:g} s",
                              {"Connection": "close"})

    @app.exception_handler(RequestTooCostly)
    async def _too_costly(_: Request, exc: RequestTooCostly) -> JSONResponse:
        return error_response(413, "request_too_costly", str(exc))

    @app.exception_handler(UploadsFull)
    async def _uploads_full(_: Request, exc: UploadsFull) -> JSONResponse:
        return error_response(503, "uploads_full", f"{exc}; retry later", retry)

    @app.exception_handler(ModelNotFoundError)
    async def _model_not_found(_: Request, exc: ModelNotFoundError) -> JSONResponse:
        return error_response(404, "model_not_found", str(exc))

    @app.exception_handler(RepositoryError)
    async def _repository_error(request: Request, exc: RepositoryError) -> JSONResponse:
        incident = logged_incident(request, "model repository error", exc)
        return error_response(503, "repository_error",
                              f"the model repository cannot be read now (incident {incident})", retry)

    @app.exception_handler(QueueFull)
    async def _queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return error_response(503, "queue_full", f"{exc}; retry later", retry)

    @app.exception_handler(BackendBusy)
    async def _backend_busy(_: Request, exc: BackendBusy) -> JSONResponse:
        # Load, not a failure: no incident to log. The public answer names no host (the log does not
        # need it either: the metrics count these).
        return error_response(503, "backend_busy", "the inference backend's queue is full; retry later", retry)

    @app.exception_handler(BackendUnavailable)
    async def _backend_unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
        incident = logged_incident(request, "inference backend unavailable", exc)
        return error_response(503, "backend_unavailable",
                              f"the inference backend is unavailable (incident {incident}); retry later", retry)

    @app.exception_handler(DeadlineExceeded)
    @app.exception_handler(RequestCancelled)
    async def _deadline(_: Request, exc: Exception) -> JSONResponse:
        return error_response(504, "deadline_exceeded", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_parameter", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        try:
            code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        except ValueError:
            code = "http_error"
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        incident = logged_incident(request, "unexpected error", exc, with_traceback=True)
        return error_response(500, "internal_error", f"the gateway failed on this request (incident {incident})")
