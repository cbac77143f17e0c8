"""Python 3.10 (allowed by pyproject) raises `asyncio.TimeoutError`, a class distinct from the builtin
`TimeoutError` there (they are one class from 3.11 on). Every timeout the gateway handles must catch
both: these tests make `asyncio.TimeoutError` a distinct class, as on 3.10, and check each handler."""

from __future__ import annotations

import asyncio
import types

import pytest

from serving.api.errors import ApiError, UploadStalled
from serving.api.middleware import BodySizeLimit
from serving.api.routes import segment
from serving.workers import DeadlineExceeded, WorkerPool


class Python310TimeoutError(Exception):
    """What `asyncio.wait_for` raises on Python 3.10: not a subclass of the builtin TimeoutError."""


@pytest.fixture
def python310_timeouts(monkeypatch):
    """asyncio.wait_for times out at once, raising a class that is not the builtin TimeoutError."""

    async def wait_for(awaitable, timeout):
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        elif isinstance(awaitable, asyncio.Future):
            awaitable.cancel()
        raise Python310TimeoutError()

    monkeypatch.setattr(asyncio, "TimeoutError", Python310TimeoutError)
    monkeypatch.setattr(asyncio, "wait_for", wait_for)


def test_worker_pool_deadline(python310_timeouts):
    pool = WorkerPool(workers=1, queue_size=0)
    reservation = pool.reserve()

    async def run():
        return await pool.run(reservation, lambda cancelled: 1, timeout=5)

    with pytest.raises(DeadlineExceeded):
        asyncio.run(run())
    pool.shutdown()


def test_upload_inactivity(python310_timeouts):
    async def app(scope, receive, send):
        await receive()

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": True}

    scope = {"type": "http", "headers": []}
    with pytest.raises(UploadStalled):
        asyncio.run(BodySizeLimit(app, max_bytes=1000, idle_timeout=1)(scope, receive, None))


def test_upload_deadline(python310_timeouts):
    class Slots:
        def slot(self):
            import contextlib
            return contextlib.nullcontext()

    gateway = types.SimpleNamespace(settings=types.SimpleNamespace(request_timeout=2.0), uploads=Slots(),
                                    metrics=None)
    request = types.SimpleNamespace(headers={})
    with pytest.raises(ApiError) as caught:
        asyncio.run(segment._receive_upload(request, gateway))
    assert caught.value.status == 408
