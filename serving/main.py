"""Builds the gateway app: `create_app(settings)`. Nothing else happens here.

Heavy objects (the backend, the loaded models, the worker pool) are created once in the
lifespan; `sceneparse serve` (serving/cli.py) runs the app under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from serving.api.errors import install_error_handlers
from serving.api.middleware import BodySizeLimit, RequestMetrics
from serving.api.routes import admin, health, metrics, models, segment, web
from serving.backends.base import Backend
from serving.backends.factory import create_backend
from serving.gateway import Gateway
from serving.metrics import GatewayMetrics
from serving.models import ModelManager
from serving.repository import ModelRepository
from serving.settings import MB as MIB
from serving.settings import Settings
from serving.workers import WorkerPool

log = logging.getLogger(__name__)

API_DESCRIPTION = (
    "Semantic segmentation (PSPNet/PSANet) as a service: POST an image to /v1/segment and get its "
    "mask back as a palette PNG, a class-id PNG, an overlay or a JSON summary."
)


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    """The FastAPI app for `settings` (default: read from SCENEPARSE_* variables).

    `backend`: an already built backend to use instead of the one the settings name.
    """
    settings = settings or Settings()
    gateway_metrics = GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = backend or await asyncio.to_thread(create_backend, settings)
        manager = ModelManager(ModelRepository(settings.repository), engine, settings.default_model,
                               warmup=settings.warmup)
        pool = WorkerPool(settings.workers, settings.queue_size, gateway_metrics,
                          budget=settings.cost_budget_mb * MIB)
        gateway = Gateway(settings, engine, manager, pool, gateway_metrics)
        await gateway.refresh()
        app.state.gateway = gateway
        log.info("admission: %d workers, %d waiting at most, %d MiB per request, %d MiB for all admitted; "
                 "%d uploads of at most %d MiB, %g s without a byte; keys %s",
                 settings.workers, settings.queue_size, settings.max_request_cost_mb, settings.cost_budget_mb,
                 settings.max_uploads, settings.max_body_bytes // MIB, settings.upload_idle_timeout,
                 "required" if settings.auth_enabled else "off (loopback or --allow-anonymous)")
        poller = asyncio.create_task(gateway.poll()) if settings.poll_interval > 0 else None
        try:
            yield
        finally:
            app.state.draining = True
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await gateway.stop_watching()
            await asyncio.to_thread(gateway.close)

    app = FastAPI(
        title="sceneparse gateway",
        description=API_DESCRIPTION,
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served by routes/web.py, behind the API keys when they are set
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.draining = False
    install_error_handlers(app, settings.retry_after, settings.max_body_bytes, settings.upload_idle_timeout)
    for router in (segment.router, models.router, admin.router, health.router, metrics.router, web.router):
        app.include_router(router)
    # Added last = outermost: metrics see every answer, including 413s and CORS refusals.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, idle_timeout=settings.upload_idle_timeout)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["X-Model-Name", "X-Model-Version", "X-Model-Precision", "Retry-After"],
        )
    app.add_middleware(RequestMetrics, metrics=gateway_metrics)
    return app
