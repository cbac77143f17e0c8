"""POST /v1/segment: an image in, its segmentation out (PNG or JSON).

Outputs: color, label, overlay and confidence PNGs; json (classes present, optional embedded
PNGs); rle (COCO run-length encodings per class). `classes` restricts every output to some
classes (serving/class_filter.py); an unknown one is a 422 before the body is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from serving.admission import MIB, RequestTooCostly, UploadsFull, estimate_cost, over_limit_message
from serving.api.deps import API_KEY_DEPENDENCIES, GatewayDep
from serving.api.errors import ApiError
from serving.backends.base import BackendBusy
from serving.cancellation import Checkpoint
from serving.class_filter import ClassFilterError, parse_classes
from serving.coco import rle_document
from serving.gateway import Gateway
from serving.imaging import decode_image, open_image
from serving.models import LoadedModel
from serving.pipeline import PipelineStats, validate_scales
from serving.rendering import base64_png, class_summary, render_png
from serving.segmentation import SegmentOptions
from serving.segmentation import segment as run_pipeline
from serving.workers import DeadlineExceeded, QueueFull

router = APIRouter(prefix="/v1", tags=["segment"], dependencies=API_KEY_DEPENDENCIES)

OutputKind = Literal["color", "label", "overlay", "confidence", "json", "rle"]
PngKind = Literal["color", "label", "overlay", "confidence"]

_IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}},
                       "required": ["image"]},
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "not an image, or a truncated/corrupt one"},
    401: {"description": "missing or invalid API key"},
    404: {"description": "unknown model"},
    408: {"description": "the upload stalled (upload_idle_timeout) or did not arrive within the deadline"},
    413: {"description": "body, pixel count or estimated cost (request_too_costly) over the limit"},
    415: {"description": "an image format outside JPEG, PNG, WebP, BMP, TIFF, GIF"},
    422: {"description": "invalid parameter"},
    503: {"description": "upload slots or cost budget full, or backend unavailable (see Retry-After)"},
    504: {"description": "deadline exceeded"},
}


class SegmentParams(BaseModel):
    """Query parameters of /v1/segment."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="model name (default: the configured or first model)")
    output: OutputKind = Field("color", description="color: palette PNG; label: 8-bit class-id PNG; "
                               "overlay: mask blended on the photo; confidence: 8-bit PNG of round(255 * p), p the "
                               "winning class's probability; json: classes present, fractions, colours; "
                               "rle: the classes present with their COCO compressed RLE masks")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="mask opacity of the overlay")
    scales: list[str] | None = Field(None, description="test scales, comma-separated or repeated (default: the model's)")
    flip: bool | None = Field(None, description="add mirrored crops (default: the model's)")
    max_side: int | None = Field(None, ge=32, description="long side the image is shrunk to for inference")
    png: list[PngKind] = Field(default_factory=list, description="with output=json: PNGs to embed as base64")
    classes: list[str] | None = Field(None, description="report only these classes: names or ids, comma-separated "
                                      "or repeated (label: others 255; color: others transparent; overlay: others "
                                      "unpainted; confidence: others 0; json/rle: only these listed)")


def _chosen_classes(params: SegmentParams, loaded: LoadedModel) -> tuple[int, ...] | None:
    try:
        return parse_classes(params.classes, loaded.meta.classes)
    except ClassFilterError as exc:
        raise ApiError(422, "invalid_parameter", str(exc)) from None


def _png_kinds(params: SegmentParams) -> tuple[str, ...]:
    """The PNGs the request renders (none for plain json and rle)."""
    if params.output == "json":
        return tuple(dict.fromkeys(params.png))
    return () if params.output == "rle" else (params.output,)


def _segment_options(params: SegmentParams, loaded: LoadedModel, gateway: Gateway) -> SegmentOptions:
    settings = gateway.settings
    meta = loaded.meta
    scales = tuple(meta.test_scales)
    if params.scales:
        try:
            values = [float(item) for text in params.scales for item in text.split(",") if item.strip()]
            scales = validate_scales(values, allowed_max=settings.max_scales)
        except ValueError as exc:
            raise ApiError(422, "invalid_parameter", f"scales: {exc}") from None
    max_side = params.max_side if params.max_side is not None else settings.max_side
    if max_side > settings.max_side_limit:
        raise ApiError(422, "invalid_parameter", f"max_side: at most {settings.max_side_limit}, got {max_side}")
    flip = meta.flip if params.flip is None else params.flip
    return SegmentOptions(scales=scales, flip=flip, stride_rate=meta.stride_rate, max_side=max_side)


async def _read_image_bytes(request: Request) -> bytes:
    """The upload: multipart field `image`, or the raw body for any other content type."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return await request.body()
    form = await request.form(max_files=4, max_fields=16)
    try:
        upload = form.get("image")
        if upload is None:
            raise ApiError(422, "missing_image", "the multipart body has no field named 'image'")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "missing_image", "the multipart field 'image' must be a file")
        return await upload.read()
    finally:
        await form.close()


@router.post(
    "/segment",
    summary="Segment one image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "application/json": {}},
                     "description": "the mask (PNG) or the class summary (JSON)"}, **_ERRORS},
    openapi_extra={"requestBody": _IMAGE_BODY},
)
async def segment(request: Request, gateway: GatewayDep, params: Annotated[SegmentParams, Query()]) -> Response:
    """The mask has the input's size after EXIF orientation. Headers name the model and version used.

    In order: the body is read (an upload slot, no worker place, an inactivity timeout); the image
    header gives its size; the request's cost is estimated and charged (413 over the per-request
    limit, 503 when the budget is spent); then a worker decodes, segments and encodes.
    """
    settings, metrics = gateway.settings, gateway.metrics
    started = time.monotonic()
    if params.model is None and gateway.manager.default_name() is None:
        raise ApiError(503, "not_ready", "no model is loaded yet; see /readyz",
                       {"Retry-After": str(settings.retry_after)})
    # An unknown model (404) or a bad parameter (422) is refused before any byte of the body is read.
    named = gateway.manager.get(params.model or gateway.manager.default_name() or "")
    _segment_options(params, named, gateway)
    _chosen_classes(params, named)
    data = await _receive_upload(request, gateway)

    # The lease on a model version and the place in the pool are released by `held` if anything
    # fails before the job is handed over; from then on the pool releases them when the job's
    # thread no longer needs its inputs (a timed-out request's thread may still be running).
    with contextlib.ExitStack() as held:
        loaded = gateway.manager.acquire(params.model)  # the version is fixed here, for the whole request
        held.callback(gateway.manager.release, loaded)
        options = _segment_options(params, loaded, gateway)
        chosen = _chosen_classes(params, loaded)  # this version's classes (a reload may have changed them)
        cost = await _charge(data, loaded, options, params, gateway)
        try:
            reservation = gateway.pool.reserve(cost)
        except QueueFull:
            metrics.rejected.labels("queue_full").inc()
            raise
        held.callback(reservation.release)
        job = _segment_job(data, loaded, options, params, chosen, settings.max_pixels)
        del data  # the job holds the body now; it is freed with it
        remaining = settings.request_timeout - (time.monotonic() - started)
        handed_over = held.pop_all()
    try:
        body, media_type, seconds, tiles = await gateway.pool.run(reservation, job, remaining,
                                                                  on_done=handed_over.close)
    except DeadlineExceeded:
        metrics.rejected.labels("deadline").inc()
        raise
    except BackendBusy:
        metrics.rejected.labels("backend_busy").inc()
        raise
    metrics.observe_stages(seconds)
    metrics.tiles.observe(tiles)
    return Response(body, media_type=media_type,
                    headers={"X-Model-Name": loaded.name, "X-Model-Version": str(loaded.version),
                             "X-Model-Precision": loaded.meta.precision})


async def _receive_upload(request: Request, gateway: Gateway) -> bytes:
    """The whole body, read under an upload slot (503 when none is free) and the request's deadline
    (408); the inactivity timeout is BodySizeLimit's."""
    settings = gateway.settings
    try:
        with gateway.uploads.slot():
            return await asyncio.wait_for(_read_image_bytes(request), settings.request_timeout)
    except UploadsFull:
        gateway.metrics.rejected.labels("uploads_full").inc()
        raise
    except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
        # The rest of the body is never read: close the connection instead of draining it.
        raise ApiError(408, "request_timeout", f"the upload did not arrive within {settings.request_timeout:g} s",
                       {"Connection": "close"}) from None


async def _charge(data: bytes, loaded: LoadedModel, options: SegmentOptions, params: SegmentParams,
                  gateway: Gateway) -> int:
    """The request's estimated cost in bytes, from the image header (nothing is decoded);
    raises the image's own errors (400, 413 pixels, 415) or RequestTooCostly (413)."""
    settings = gateway.settings
    # Header parsing touches only the first bytes, but a TIFF may hold many directories: off the loop.
    width, height = await asyncio.to_thread(_header_size, data, settings.max_pixels)
    outputs = _png_kinds(params) + (("rle",) if params.output == "rle" else ())
    meta = loaded.meta
    # EXIF orientation is applied only when decoding: charge the costlier of the two orientations.
    costs = [estimate_cost(w, h, len(data), loaded.spec, options, meta.max_batch_size, outputs)
             for w, h in {(width, height), (height, width)}]
    cost = max(costs, key=lambda c: c.total)
    limit = settings.max_request_cost_mb * MIB
    if cost.total > limit:
        gateway.metrics.rejected.labels("too_costly").inc()
        raise RequestTooCostly(over_limit_message(cost, limit, width, height, options, meta.num_classes))
    return cost.total


def _header_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    image = open_image(data, max_pixels)
    try:
        return image.size
    finally:
        image.close()


def _segment_job(data: bytes, loaded: LoadedModel, options: SegmentOptions, params: SegmentParams,
                 chosen: tuple[int, ...] | None,
                 max_pixels: int) -> Callable[[threading.Event], tuple[bytes, str, dict[str, float], int]]:
    """The work of one request, for a worker thread: decode, pipeline, encode; returns
    (body, media type, seconds per stage, tiles).

    Once the deadline passes (`cancelled` is set) the work stops at its next stage boundary: after
    the decode, before each batch, resize, band of the stitch, output and band of rendering.
    """
    meta = loaded.meta
    pngs = _png_kinds(params)

    def job(cancelled: threading.Event) -> tuple[bytes, str, dict[str, float], int]:
        check = Checkpoint(cancelled)
        seconds: dict[str, float] = {}
        tick = time.perf_counter()
        image = decode_image(data, max_pixels)
        seconds["decode"] = time.perf_counter() - tick
        stats = PipelineStats()
        prediction = run_pipeline(image, loaded.runner, meta, options, stats, loaded.spec,
                                  confidence="confidence" in pngs, check=check)
        label = prediction.label
        check()
        tick = time.perf_counter()

        def png(kind: str) -> bytes:
            return render_png(kind, image, label, meta, params.alpha, chosen, prediction.confidence, check)

        if params.output == "json":
            document = {
                "model": loaded.name,
                "version": loaded.version,
                "precision": meta.precision,
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "tiles": stats.tiles,
                "classes": class_summary(label, meta, chosen),
            }
            if pngs:  # the PNGs asked for with png=...; no field at all when none was
                document["png"] = {kind: base64_png(png(kind)) for kind in pngs}
            body = _json_bytes(document)
            media_type = "application/json"
        elif params.output == "rle":
            body = _json_bytes(rle_document(label, meta, chosen) | {"model": loaded.name, "version": loaded.version})
            media_type = "application/json"
        else:
            body = png(params.output)
            media_type = "image/png"
        seconds["encode"] = time.perf_counter() - tick
        seconds.update(stats.seconds)
        return body, media_type, seconds, stats.tiles

    return job


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()
