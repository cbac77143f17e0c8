"""Admission by cost (issue 10): the estimate bounds what the pipeline allocates, a request over the
per-request limit is 413 before anything is decoded, and the budget bounds what is admitted."""

from __future__ import annotations

import json
import re
import threading
import tracemalloc

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.admission import MIB, estimate_cost
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.coco import rle_document
from serving.imaging import decode_image
from serving.main import create_app
from serving.pipeline import PipelineSpec
from serving.rendering import render_png
from serving.segmentation import SegmentOptions, segment
from serving.settings import Settings
from serving.softmax import channel_softmax_nhwc
from serving.workers import QueueFull, WorkerPool
from tests.serving.conftest import encode, scene_array
from tests.serving.test_imaging import raw_png
from tests.serving.test_limits import GatedBackend, assert_error, wait_until


def measured_peak(data: bytes, runner, meta, spec: PipelineSpec, options: SegmentOptions, output: str,
                  chosen=None) -> int:
    """Bytes the job's work allocates at its peak (numpy and Pillow buffers, traced), plus the body."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        image = decode_image(data, 10**9)
        prediction = segment(image, runner, meta, options, spec=spec, confidence=output == "confidence")
        if output == "rle":
            json.dumps(rle_document(prediction.label, meta, chosen))
        else:
            render_png(output, image, prediction.label, meta, 0.5, chosen, prediction.confidence)
        return tracemalloc.get_traced_memory()[1] - start + len(data)
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def tiny(gateway_source_repository, psp_model_name):
    meta = gateway_source_repository.read_metadata(psp_model_name)
    runner = OnnxRuntimeBackend(device="cpu", threads=1).open(gateway_source_repository, meta)
    # The softmax session is built once per process (importing onnx: about 3 MiB), not per request.
    channel_softmax_nhwc(np.zeros((1, meta.num_classes, 2, 2), dtype=np.float32))
    return meta, runner, PipelineSpec.from_metadata(meta)


@pytest.mark.parametrize(("size", "scales", "flip", "max_side", "output"), [
    ((120, 90), (1.0,), True, 1024, "color"),
    ((640, 480), (0.5, 1.0, 1.75), True, 1024, "overlay"),
    ((900, 300), (1.0,), False, 200, "label"),
    ((1500, 1100), (1.0, 2.0), True, 2048, "overlay"),
    ((640, 480), (1.0,), True, 1024, "confidence"),
    ((1200, 900), (1.0,), True, 400, "confidence"),
    ((640, 480), (1.0,), True, 1024, "rle"),
    ((640, 480), (1.0,), False, 1024, "color (filtered)"),
    ((640, 480), (1.0,), False, 1024, "overlay (filtered)"),
])
def test_the_estimate_bounds_what_the_pipeline_allocates(tiny, size, scales, flip, max_side, output):
    meta, runner, spec = tiny
    width, height = size
    output, _, filtered = output.partition(" ")
    data = encode(np.kron(scene_array(height // 10, width // 10), np.ones((10, 10, 1), np.uint8)))
    options = SegmentOptions(scales, flip, meta.stride_rate, max_side)
    cost = estimate_cost(width, height, len(data), spec, options, meta.max_batch_size, (output,))
    peak = measured_peak(data, runner, meta, spec, options, output, (0, 2, 3) if filtered else None)
    assert cost.total >= peak, (cost, peak)
    assert cost.total <= 4 * peak + 4 * MIB, "an estimate this loose would refuse requests for nothing"


class ManyClassesStandIn:
    """Stands in for a 150-class model (the test fixtures have 6 classes): random logits of the
    right shape, so that the class-dependent parts of the estimate are exercised."""

    def __init__(self, classes: int, crop: int, max_batch_size: int):
        self.classes, self.crop, self.max_batch_size = classes, crop, max_batch_size

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(len(batch))
        return rng.standard_normal((len(batch), self.classes, self.crop, self.crop), dtype=np.float32)


class _Meta:
    palette = [[i, 255 - i, 0] for i in range(150)]
    num_classes = 150


def test_the_estimate_bounds_a_150_class_stand_in_runner():
    spec = PipelineSpec(97, 97, 150, (124.0, 117.0, 104.0), (58.0, 57.0, 57.0), 128)
    data = encode(scene_array(240, 320))
    for scales, flip in (((1.0,), True), ((0.5, 1.0, 1.5), False)):
        options = SegmentOptions(scales, flip, 2 / 3, 1024)
        cost = estimate_cost(320, 240, len(data), spec, options, 8, ("color",))
        peak = measured_peak(data, ManyClassesStandIn(150, 97, 8), _Meta(), spec, options, "color")
        assert peak <= cost.total <= 3 * peak, (cost, peak)


def test_cost_grows_with_what_the_request_asks_for(tiny):
    meta, _, spec = tiny

    def cost(width=1600, height=1200, scales=(1.0,), flip=True, max_side=1024, outputs=("color",)):
        options = SegmentOptions(scales, flip, meta.stride_rate, max_side)
        return estimate_cost(width, height, 0, spec, options, meta.max_batch_size, outputs).total

    assert cost(max_side=2048) > cost(max_side=1024) > cost(max_side=256)
    assert cost(scales=(1.0, 1.5)) > cost(scales=(1.0,)) and cost(scales=(2.0,)) > cost(scales=(1.0,))
    assert cost(flip=True) >= cost(flip=False)
    assert cost(width=3200, height=2400) > cost()
    # Rendering comes after the probabilities are freed: an overlay costs more only where it is the
    # larger stage (a large image inferred small), and never less.
    assert cost(outputs=("overlay",)) >= cost(outputs=("color",))
    big_small = {"width": 3200, "height": 2400, "max_side": 256}
    assert cost(**big_small, outputs=("overlay",)) > cost(**big_small, outputs=("color",))
    many = PipelineSpec(spec.crop_h, spec.crop_w, 150, spec.mean, spec.std, spec.base_size)
    options = SegmentOptions((1.0,), True, meta.stride_rate, 1024)
    assert (estimate_cost(1600, 1200, 0, many, options, 4).total
            > estimate_cost(1600, 1200, 0, spec, options, 4).total)


# --- through the API ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(gateway_source_repository):
    settings = Settings(repository=gateway_source_repository.root, poll_interval=0, ort_threads=1,
                        max_side_limit=4096, max_request_cost_mb=160, cost_budget_mb=160, max_pixels=50_000_000)
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_request_over_the_limit_is_413_naming_the_limit_and_what_to_change(client):
    # A header-only PNG: 6000x4000 pixels that are never decoded (the answer comes from the header).
    header_only = raw_png(6000, 4000, 8, 2, rows=None)
    response = client.post("/v1/segment", params={"max_side": 4096, "scales": "1.0,2.0"}, content=header_only)
    body = assert_error(response, 413, "request_too_costly")
    detail = body["detail"]
    assert "max_request_cost_mb=160" in detail and "max_side" in detail and "scales" in detail
    assert "6000x4000" in detail and "MiB" in detail
    assert 'sceneparse_rejected_requests_total{reason="too_costly"} 1.0' in client.get("/metrics").text


def test_the_same_image_with_a_smaller_max_side_is_admitted(client):
    image = encode(np.kron(scene_array(40, 60), np.ones((50, 50, 1), np.uint8)))  # 3000x2000
    costly = client.post("/v1/segment", params={"max_side": 4096, "scales": "1.0,2.0"}, content=image)
    assert_error(costly, 413, "request_too_costly")
    cheap = client.post("/v1/segment", params={"max_side": 512, "output": "label"}, content=image)
    assert cheap.status_code == 200, cheap.text


def test_the_pool_admits_by_cost():
    pool = WorkerPool(workers=1, queue_size=10, budget=100)
    first = pool.reserve(60)
    with pytest.raises(QueueFull, match="cost budget"):
        pool.reserve(50)
    second = pool.reserve(40)
    assert pool.admitted == 2 and pool.admitted_cost == 100
    first.release()
    first.release()  # idempotent
    third = pool.reserve(50)
    assert pool.admitted_cost == 90
    second.release()
    third.release()
    assert pool.admitted == 0 and pool.admitted_cost == 0
    alone = pool.reserve(500)  # alone in the pool: the per-request limit is the caller's to enforce
    alone.release()
    pool.shutdown()


def test_the_budget_is_shared_by_running_and_waiting_requests(gateway_source_repository, model_name, scene_png):
    meta = gateway_source_repository.read_metadata(model_name)
    big = encode(np.kron(scene_array(30, 40), np.ones((10, 10, 1), np.uint8)))  # 400x300
    heavy = {"max_side": 400, "scales": "1.0,2.0", "output": "label"}
    options = SegmentOptions((1.0, 2.0), meta.flip, meta.stride_rate, 400)
    heavy_cost = estimate_cost(400, 300, len(big), PipelineSpec.from_metadata(meta), options,
                               meta.max_batch_size, ("label",)).total
    budget_mb = int(heavy_cost * 1.5 / MIB) + 1  # room for one heavy request, not two
    backend = GatedBackend()
    settings = Settings(repository=gateway_source_repository.root, poll_interval=0, workers=1, queue_size=8,
                        max_request_cost_mb=budget_mb, cost_budget_mb=budget_mb, retry_after=3)
    with TestClient(create_app(settings, backend)) as client:
        pool = client.app.state.gateway.pool
        answers: list[int] = []
        running = threading.Thread(target=lambda: answers.append(
            client.post("/v1/segment", params=heavy, content=big).status_code))
        running.start()
        wait_until(lambda: pool.admitted == 1)
        assert pool.admitted_cost == heavy_cost
        refused = client.post("/v1/segment", params=heavy, content=big)
        assert_error(refused, 503, "queue_full")
        assert refused.headers["retry-after"] == "3" and "cost budget" in refused.json()["detail"]
        small = threading.Thread(target=lambda: answers.append(
            client.post("/v1/segment", content=scene_png).status_code))
        small.start()
        wait_until(lambda: pool.admitted == 2)  # a small one still fits beside it, and waits
        gauge = re.search(r"^sceneparse_admitted_cost_bytes (\S+)$", client.get("/metrics").text, re.M)
        assert float(gauge.group(1)) == pool.admitted_cost
        backend.gate.set()
        running.join(60)
        small.join(60)
        assert answers == [200, 200]
        wait_until(lambda: pool.admitted == 0 and pool.admitted_cost == 0)
