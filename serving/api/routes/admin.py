"""POST /v1/admin/reload: pick up new or pinned versions now instead of at the next poll."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from serving.api.deps import ADMIN_KEY_DEPENDENCIES, GatewayDep

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=ADMIN_KEY_DEPENDENCIES)


@router.post("/reload", summary="Rescan the model repository")
async def reload_models(gateway: GatewayDep) -> dict[str, Any]:
    """Loads each model's served version; in-flight requests finish on the version they started on.

    Returns `served` (model -> version), `changed` (model -> [old, new]) and `errors` (model -> message).
    """
    report = await gateway.refresh()
    return report.to_dict()


@router.get("/status", summary="Diagnostics for operators")
async def status(gateway: GatewayDep) -> dict[str, Any]:
    """Readiness with its reason, each model's version and open leases, the last load errors in full
    (paths and library messages that public answers leave out), the backend's address and the
    admission figures (admitted requests and their estimated cost, uploads in progress)."""
    return await gateway.details()
