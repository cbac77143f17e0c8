"""/healthz (the process is alive) and /readyz (it can segment now). Never behind API keys."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", responses={503: {"description": "not ready"}})
async def readyz(request: Request) -> JSONResponse:
    """200 when the backend is reachable and a model is ready on it; 503 while starting or shutting down."""
    state = request.app.state
    gateway = getattr(state, "gateway", None)
    if state.draining:
        return JSONResponse({"status": "not_ready", "reason": "shutting down"}, status_code=503)
    if gateway is None:
        return JSONResponse({"status": "not_ready", "reason": "starting"}, status_code=503)
    ready, reason = await gateway.readiness()
    models = {entry.name: entry.version for entry in gateway.manager.loaded()}
    return JSONResponse({"status": "ready" if ready else "not_ready", "reason": reason, "models": models},
                        status_code=200 if ready else 503)
