"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response

from serving.api.deps import API_KEY_DEPENDENCIES, GatewayDep

router = APIRouter(tags=["metrics"], dependencies=API_KEY_DEPENDENCIES)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(gateway: GatewayDep) -> Response:
    return Response(gateway.metrics.render(), media_type=gateway.metrics.content_type)
