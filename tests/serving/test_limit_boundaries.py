"""Every request limit at its boundary: exactly at the limit is accepted, one over is refused with
the status docs/security.md documents. (Far-over-the-limit inputs are in test_limits.py and
test_admission.py; those pass also when a limit is enforced at a fraction of its setting.)

    body size        max_body_bytes        413 body_too_large (declared length and chunked)
    pixel count      max_pixels            413 image_too_large
    inference size   max_side_limit        422 (also the settings' max_side <= max_side_limit)
    test scales      max_scales, [0.25, 2] 422
    waiting room     queue_size            503 queue_full + Retry-After
    one request      max_request_cost_mb   413 request_too_costly
    all admitted     cost_budget_mb        503 queue_full + Retry-After
    uploads at once  max_uploads           503 uploads_full (UploadSlots)
"""

from __future__ import annotations

import struct
import threading
import zlib

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serving.admission import MIB, UploadsFull, UploadSlots, estimate_cost
from serving.main import create_app
from serving.pipeline import PipelineSpec
from serving.segmentation import SegmentOptions
from serving.settings import Settings
from tests.serving.conftest import encode, scene_array
from tests.serving.test_limits import GatedBackend, assert_error, wait_until

BODY_LIMIT = 64 * 1024
PIXEL_LIMIT = 100 * 80  # 8000; one more is 127 x 63 = 8001
MAX_SIDE_LIMIT = 256
MAX_SCALES = 3


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def padded_png(png: bytes, size: int) -> bytes:
    """`png` grown to exactly `size` bytes by a tEXt chunk after IHDR: the same image, a longer body."""
    padding = size - len(png) - 12 - len(b"pad\0")  # a chunk adds length, type and CRC (12 bytes)
    assert padding >= 0, f"{len(png)} bytes do not fit in {size}"
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, its 13 bytes, its CRC
    data = png[:ihdr_end] + png_chunk(b"tEXt", b"pad\0" + b"x" * padding) + png[ihdr_end:]
    assert len(data) == size
    return data


@pytest.fixture(scope="module")
def client(gateway_source_repository):
    settings = Settings(repository=gateway_source_repository.root, poll_interval=0, ort_threads=1,
                        max_body_bytes=BODY_LIMIT, max_pixels=PIXEL_LIMIT, max_side=128,
                        max_side_limit=MAX_SIDE_LIMIT, max_scales=MAX_SCALES)
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_body_of_exactly_max_body_bytes_is_accepted_one_byte_more_is_413(client):
    image = encode(scene_array(60, 80))
    at_limit, over = padded_png(image, BODY_LIMIT), padded_png(image, BODY_LIMIT + 1)
    assert client.post("/v1/segment", content=at_limit).status_code == 200
    assert_error(client.post("/v1/segment", content=over), 413, "body_too_large")

    def chunks(data: bytes):  # no Content-Length: the running count decides
        for start in range(0, len(data), 8192):
            yield data[start:start + 8192]

    response = client.post("/v1/segment", content=chunks(at_limit))
    assert "content-length" not in response.request.headers
    assert response.status_code == 200, response.text
    assert_error(client.post("/v1/segment", content=chunks(over)), 413, "body_too_large")


def test_an_image_of_exactly_max_pixels_is_accepted_one_pixel_more_is_413(client):
    assert client.post("/v1/segment", content=encode(scene_array(80, 100))).status_code == 200
    body = assert_error(client.post("/v1/segment", content=encode(scene_array(63, 127))), 413, "image_too_large")
    assert "8001" in body["detail"] and str(PIXEL_LIMIT) in body["detail"]
    # Either orientation: the limit is on width x height.
    assert client.post("/v1/segment", content=encode(scene_array(100, 80))).status_code == 200


def test_max_side_at_the_limit_is_accepted_one_over_is_422(client, scene_png):
    ok = client.post("/v1/segment", params={"max_side": MAX_SIDE_LIMIT}, content=scene_png)
    assert ok.status_code == 200, ok.text
    body = assert_error(client.post("/v1/segment", params={"max_side": MAX_SIDE_LIMIT + 1}, content=scene_png), 422)
    assert str(MAX_SIDE_LIMIT) in body["detail"]
    assert client.post("/v1/segment", params={"max_side": 32}, content=scene_png).status_code == 200
    assert_error(client.post("/v1/segment", params={"max_side": 31}, content=scene_png), 422)
    # The configured default obeys the same limit.
    assert Settings(max_side=MAX_SIDE_LIMIT, max_side_limit=MAX_SIDE_LIMIT).max_side == MAX_SIDE_LIMIT
    with pytest.raises(ValidationError, match="max_side"):
        Settings(max_side=MAX_SIDE_LIMIT + 1, max_side_limit=MAX_SIDE_LIMIT)


def test_max_scales_scales_are_accepted_one_more_is_422(client, scene_png):
    def post(scales: str):
        return client.post("/v1/segment", params={"scales": scales, "output": "json", "flip": "false"},
                           content=scene_png)

    one = post("1.0").json()["tiles"]
    at_limit = post(",".join(["1.0"] * MAX_SCALES))
    assert at_limit.status_code == 200, at_limit.text
    assert at_limit.json()["tiles"] == MAX_SCALES * one  # every scale was run
    body = assert_error(post(",".join(["1.0"] * (MAX_SCALES + 1))), 422)
    assert f"between 1 and {MAX_SCALES} scales" in body["detail"]
    # Each scale within [0.25, 2.0], both ends included.
    assert post("0.25,2.0").status_code == 200
    for scales in ("0.2499", "2.0001"):
        assert_error(post(scales), 422)


def test_queue_size_requests_wait_one_more_is_503(gateway_source_repository, scene_png):
    queue_size = 3
    backend = GatedBackend()
    settings = Settings(repository=gateway_source_repository.root, poll_interval=0, workers=1,
                        queue_size=queue_size, retry_after=5)
    with TestClient(create_app(settings, backend)) as client:
        pool = client.app.state.gateway.pool
        answers: list[int] = []
        threads = [threading.Thread(target=lambda: answers.append(
            client.post("/v1/segment", content=scene_png).status_code)) for _ in range(1 + queue_size)]
        try:
            for thread in threads:
                thread.start()
            wait_until(lambda: pool.admitted == 1 + queue_size, timeout=30)  # one running, queue_size waiting
            refused = client.post("/v1/segment", content=scene_png)
            assert_error(refused, 503, "queue_full")
            assert refused.headers["retry-after"] == "5"
        finally:
            backend.gate.set()
            for thread in threads:
                thread.join(60)
        assert answers == [200] * (1 + queue_size)


# --- cost: exact to the byte, as a padded body adds exactly its length to the cost ---------------
MAX_SIDE = 1024


def cost_without_body(repository, model: str, width: int, height: int) -> int:
    """What the gateway charges a default request (the model's scales and flip, max_side 1024, a
    colour PNG) for a width x height image, less its body (serving/admission.py, as segment.py
    charges it: the costlier of the two orientations)."""
    meta = repository.read_metadata(model)
    spec, options = PipelineSpec.from_metadata(meta), SegmentOptions.defaults_for(meta, MAX_SIDE)
    return max(estimate_cost(w, h, 0, spec, options, meta.max_batch_size, ("color",)).total
               for w, h in {(width, height), (height, width)})


def test_a_request_costing_exactly_max_request_cost_mb_is_accepted_one_byte_more_is_413(
        gateway_source_repository, model_name):
    image = encode(scene_array(60, 80))
    fixed = cost_without_body(gateway_source_repository, model_name, 80, 60)
    limit_mb = -(-(fixed + len(image) + 64) // MIB)  # the first whole MiB a padded body can reach
    settings = Settings(repository=gateway_source_repository.root, poll_interval=0, ort_threads=1,
                        max_side=MAX_SIDE, max_body_bytes=4 * MIB, max_request_cost_mb=limit_mb)
    with TestClient(create_app(settings)) as client:
        at_limit = padded_png(image, limit_mb * MIB - fixed)
        assert client.post("/v1/segment", content=at_limit).status_code == 200
        over = padded_png(image, limit_mb * MIB - fixed + 1)
        body = assert_error(client.post("/v1/segment", content=over), 413, "request_too_costly")
        assert f"max_request_cost_mb={limit_mb}" in body["detail"]


def test_requests_costing_exactly_the_budget_are_admitted_one_byte_more_is_503(
        gateway_source_repository, model_name, scene_png):
    fixed = cost_without_body(gateway_source_repository, model_name, 80, 60)  # scene_png is 80x60
    first_cost = fixed + len(scene_png)
    budget_mb = -(-(first_cost + fixed + len(scene_png) + 64) // MIB)
    room = budget_mb * MIB - first_cost  # what a second request may cost beside the first, to the byte
    backend = GatedBackend()
    settings = Settings(repository=gateway_source_repository.root, poll_interval=0, workers=1, queue_size=8,
                        max_side=MAX_SIDE, max_body_bytes=4 * MIB, cost_budget_mb=budget_mb,
                        max_request_cost_mb=budget_mb, retry_after=2)
    with TestClient(create_app(settings, backend)) as client:
        pool = client.app.state.gateway.pool
        answers: list[int] = []

        def post(data: bytes) -> threading.Thread:
            thread = threading.Thread(target=lambda: answers.append(
                client.post("/v1/segment", content=data).status_code))
            thread.start()
            return thread

        threads = [post(scene_png)]
        try:
            wait_until(lambda: pool.admitted == 1)  # running, held at the gate
            assert pool.admitted_cost == first_cost
            refused = client.post("/v1/segment", content=padded_png(scene_png, room - fixed + 1))
            assert_error(refused, 503, "queue_full")
            assert refused.headers["retry-after"] == "2" and "cost budget" in refused.json()["detail"]
            threads.append(post(padded_png(scene_png, room - fixed)))
            wait_until(lambda: pool.admitted == 2)  # admitted: it waits for the worker
            assert pool.admitted_cost == budget_mb * MIB
        finally:
            backend.gate.set()
            for thread in threads:
                thread.join(60)
        assert answers == [200, 200]


def test_max_uploads_bodies_are_received_at_once_one_more_is_refused():
    slots = UploadSlots(limit=3)
    held = [slots.slot() for _ in range(3)]
    for slot in held:
        slot.__enter__()
    assert slots.active == 3
    with pytest.raises(UploadsFull), slots.slot():
        pass
    held[0].__exit__(None, None, None)
    with slots.slot():  # a freed slot is usable again
        assert slots.active == 3
    for slot in held[1:]:
        slot.__exit__(None, None, None)
    assert slots.active == 0
