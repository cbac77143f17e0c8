"""GET /v1/models and GET /v1/models/{name}/legend."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from serving.api.deps import API_KEY_DEPENDENCIES, GatewayDep
from serving.models import LoadedModel
from serving.rendering import legend

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=API_KEY_DEPENDENCIES)


def _describe(entry: LoadedModel, versions: list[int], backend: str, default: str | None) -> dict[str, Any]:
    meta = entry.meta
    return {
        "name": meta.name,
        "version": meta.version,
        "versions": versions,
        "default": meta.name == default,
        "dataset": meta.dataset,
        "arch": meta.arch,
        "layers": meta.layers,
        "num_classes": meta.num_classes,
        "classes": meta.classes,
        "crop_size": [meta.crop_h, meta.crop_w],
        "base_size": meta.base_size,
        "test_scales": meta.test_scales,
        "flip": meta.flip,
        "max_batch_size": meta.max_batch_size,
        "precision": meta.precision,
        "quantization": quantization_summary(meta),
        "backend": backend,
    }


def quantization_summary(meta) -> dict[str, Any] | None:
    """An int8 version's gate figures, as measured at export against its fp32 graph; None otherwise."""
    gate = meta.parity.get("int8") if isinstance(meta.parity, dict) else None
    if meta.precision != "int8" or not isinstance(gate, dict):
        return None
    miou = gate.get("miou") or {}
    return {
        "argmax_agreement": gate.get("argmax_agreement"),
        "held_out_crops": (gate.get("agreement") or {}).get("crops"),
        "miou_fp32": miou.get("fp32"),
        "miou_int8": miou.get("int8"),
        "miou_drop": gate.get("miou_drop"),
        "criteria": gate.get("criteria"),
        "kept_fp32": (gate.get("options") or {}).get("keep_fp32"),
    }


@router.get("", summary="The served models")
async def list_models(gateway: GatewayDep) -> dict[str, Any]:
    """Each served model: its served version, the versions on disk, dataset, classes, crop size, backend."""
    loaded = gateway.manager.loaded()
    repository = gateway.manager.repository
    versions = await asyncio.to_thread(lambda: {e.name: repository.list_versions(e.name) for e in loaded})
    default = gateway.manager.default_name()
    return {"models": [_describe(e, versions[e.name], gateway.backend.kind, default) for e in loaded]}


@router.get("/{name}/legend", summary="Class names and colours of a model")
async def model_legend(name: str, gateway: GatewayDep) -> dict[str, Any]:
    """Every class id of the served version with its name and colour ([R, G, B] and #rrggbb)."""
    entry = gateway.manager.get(name)
    return {"model": entry.name, "version": entry.version, "classes": legend(entry.meta)}
