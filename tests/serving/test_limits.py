"""Limits and bad input: each gets its own status and a JSON error, never a 500, and the gateway keeps serving."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serving.backends.base import BackendUnavailable
from serving.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeRunner
from serving.main import create_app
from serving.settings import Settings
from serving.stitching import ProbabilityField
from tests.serving.conftest import encode, scene_array
from tests.serving.test_imaging import raw_png

BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def client(gateway_source_repository):
    settings = Settings(repository=gateway_source_repository.root, poll_interval=0, ort_threads=1,
                        max_body_bytes=BODY_LIMIT, max_pixels=1_000_000)
    with TestClient(create_app(settings)) as client:
        yield client


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"} and body["detail"]
    if code:
        assert body["error"] == code, body
    return body


def assert_still_serving(client, scene_png) -> None:
    assert client.post("/v1/segment", content=scene_png).status_code == 200


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 * side^2 bytes."""
    return encode(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))


def test_body_over_the_limit_with_content_length(client, scene_png):
    data = noise_png(200)
    assert len(data) > BODY_LIMIT
    assert_error(client.post("/v1/segment", content=data), 413, "body_too_large")
    assert_error(client.post("/v1/segment", files={"image": ("big.png", data, "image/png")}), 413, "body_too_large")
    assert_still_serving(client, scene_png)


def test_chunked_body_over_the_limit(client, scene_png):
    data = noise_png(200)

    def chunks():
        for start in range(0, len(data), 8192):
            yield data[start:start + 8192]

    response = client.post("/v1/segment", content=chunks())
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "body_too_large")
    assert_still_serving(client, scene_png)


def test_pixels_over_the_limit(client, scene_png):
    assert_error(client.post("/v1/segment", content=raw_png(20000, 20000, 8, 2, rows=None)), 413, "image_too_large")
    bomb = raw_png(1200, 1000, 8, 0, (b"\x00" + bytes(1200)) * 1000)  # 1.2 MP of zeros in ~1 kB
    assert_error(client.post("/v1/segment", content=bomb), 413, "image_too_large")
    assert_still_serving(client, scene_png)


@pytest.mark.parametrize(("data", "status", "code"), [
    (b"", 400, "invalid_image"),
    (b"GET / HTTP/1.1\r\n", 400, "invalid_image"),
    (b"\x89PNG\r\n\x1a\n" + bytes(30), 400, "invalid_image"),
])
def test_not_an_image(client, scene_png, data, status, code):
    assert_error(client.post("/v1/segment", content=data, headers={"content-type": "image/png"}), status, code)
    assert_still_serving(client, scene_png)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_truncated_or_corrupt(client, scene_png, fmt):
    data = encode(scene_array(80, 80, seed=2), fmt)
    assert_error(client.post("/v1/segment", content=data[: len(data) // 2]), 400, "invalid_image")
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2: len(corrupt) // 2 + 64] = bytes(range(64))
    response = client.post("/v1/segment", content=bytes(corrupt))
    # Some corruptions still decode (JPEG is forgiving): then the answer is a mask, never a 500.
    assert response.status_code in {200, 400}
    assert_still_serving(client, scene_png)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "PDF"])
def test_unsupported_formats_are_415_whatever_the_content_type(client, scene_png, fmt):
    data = encode(scene_array(16, 16), fmt)
    response = client.post("/v1/segment", files={"image": ("photo.png", data, "image/png")})
    assert_error(response, 415, "unsupported_image_format")
    assert_still_serving(client, scene_png)


def test_format_is_judged_by_bytes(client):
    png = encode(scene_array(20, 20))
    response = client.post("/v1/segment", files={"image": ("photo.gif", png, "application/pdf")})
    assert response.status_code == 200


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "P", "RGBA", "LA", "L", "1"])
def test_every_pixel_mode_gives_a_full_size_mask(client, mode):
    rgb = Image.fromarray(scene_array(24, 36))
    image = {
        "CMYK": lambda: rgb.convert("CMYK"),
        "I;16": lambda: Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257),
        "P": lambda: rgb.convert("P"),
        "RGBA": lambda: rgb.convert("RGBA"),
        "LA": lambda: rgb.convert("LA"),
        "L": lambda: rgb.convert("L"),
        "1": lambda: rgb.convert("1"),
    }[mode]()
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "1" else "PNG"
    response = client.post("/v1/segment", params={"output": "label"}, content=encode(image, fmt))
    assert response.status_code == 200, response.text
    assert np.asarray(Image.open(io.BytesIO(response.content))).shape == (24, 36)


# --- queue, deadline and backend failures ------------------------------------------------------
class GatedRunner(OnnxRuntimeRunner):
    """The real ONNX Runtime runner, made to wait for `gate` before each batch (to hold workers busy)."""

    def __init__(self, inner: OnnxRuntimeRunner, backend: GatedBackend):
        super().__init__(inner.meta, inner.session)
        self.backend = backend

    def warm_up(self):
        # The real warm-up, past the gate: the gate holds requests, not loading.
        OnnxRuntimeRunner.__call__(self, np.zeros((self.max_batch_size, 3, self.meta.crop_h, self.meta.crop_w),
                                                  np.float32))

    def __call__(self, batch):
        self.backend.entered.set()
        if not self.backend.gate.wait(30):
            raise TimeoutError("gate never opened")
        if self.backend.unavailable:
            raise BackendUnavailable("Triton at 127.0.0.1:1 refused the connection")
        self.backend.calls += 1
        return super().__call__(batch)


class GatedBackend(OnnxRuntimeBackend):
    def __init__(self):
        super().__init__(device="cpu", threads=1)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.unavailable = False
        self.calls = 0

    def open(self, repository, meta):
        return GatedRunner(super().open(repository, meta), self)


@pytest.fixture
def gated(gateway_source_repository, request):
    """(client, backend): one worker, one waiting place; the deadline is the indirect parameter (default 30 s)."""
    backend = GatedBackend()
    settings = Settings(repository=gateway_source_repository.root, poll_interval=0, workers=1, queue_size=1,
                        request_timeout=getattr(request, "param", 30.0), retry_after=7)
    with TestClient(create_app(settings, backend)) as client:
        yield client, backend
        backend.gate.set()


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_full_queue_is_503_with_retry_after(gated, scene_png):
    client, backend = gated
    pool = client.app.state.gateway.pool
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(client.post("/v1/segment", content=scene_png)
                                                              .status_code)) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_until(lambda: pool.admitted == 2)  # one running (held at the gate), one waiting
    response = client.post("/v1/segment", content=scene_png)
    assert_error(response, 503, "queue_full")
    assert response.headers["retry-after"] == "7"
    # A place is taken only after the body is read (issue 10, slow clients): an over-limit upload is
    # refused by its declared length, before any byte is read, whatever the queue.
    assert_error(client.post("/v1/segment", content=bytes(25 * 1024 * 1024)), 413, "body_too_large")
    assert "sceneparse_queue_depth 1.0" in client.get("/metrics").text
    backend.gate.set()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [200, 200]
    wait_until(lambda: pool.admitted == 0)
    assert client.post("/v1/segment", content=scene_png).status_code == 200


@pytest.mark.parametrize("gated", [1.5], indirect=True)
def test_deadline_is_504_and_the_rest_of_the_work_is_dropped(gated, gateway_source_repository, model_name):
    client, backend = gated
    gateway = client.app.state.gateway
    meta = gateway_source_repository.read_metadata(model_name)
    # Enough crops for several batches: two scales, flipped.
    params = {"scales": "1.0,2.0", "flip": "true", "output": "json"}
    image = encode(scene_array(90, 120))
    response = client.post("/v1/segment", params=params, content=image)
    assert_error(response, 504, "deadline_exceeded")
    assert backend.entered.is_set() and backend.calls == 0
    entry = gateway.manager.get(model_name)
    assert entry.leases == 1  # the dropped job still holds its version until its thread lets go
    backend.gate.set()
    wait_until(lambda: gateway.pool.admitted == 0)
    assert entry.leases == 0
    assert backend.calls == 1  # the batch already inside the runner finished; no further batch ran
    # The same backend behind a generous deadline: how many batches the whole request needs.
    patient = Settings(repository=gateway_source_repository.root, poll_interval=0, request_timeout=60)
    with TestClient(create_app(patient, backend)) as other:
        full = other.post("/v1/segment", params=params, content=image)
    assert full.status_code == 200
    batches = -(-full.json()["tiles"] // meta.max_batch_size)
    assert batches >= 2 and backend.calls == 1 + batches
    assert 'sceneparse_rejected_requests_total{reason="deadline"} 1.0' in client.get("/metrics").text


@pytest.mark.parametrize("gated", [1.5], indirect=True)
@pytest.mark.parametrize("output", ["overlay", "json"])
def test_past_its_deadline_a_request_stops_at_the_next_stage_not_after_the_last_batch(gated, monkeypatch, output):
    """Issue 10 item 4: the last batch returns after the deadline; no band is stitched, nothing is
    resized or rendered, and the worker is free at once."""
    client, backend = gated
    gateway = client.app.state.gateway
    bands, renders = [], []
    rows = ProbabilityField.rows
    monkeypatch.setattr(ProbabilityField, "rows", lambda self, *a: bands.append(a) or rows(self, *a))
    monkeypatch.setattr("serving.api.routes.segment.render_png", lambda *a, **k: renders.append(a) or b"")
    # One batch: 2 crops (one scale, no flip); 300x200 is shrunk for inference and its label resized.
    params = {"flip": "false", "scales": "1.0", "output": output, "png": "overlay", "max_side": 100}
    response = client.post("/v1/segment", params=params, content=encode(scene_array(200, 300)))
    assert_error(response, 504, "deadline_exceeded")
    assert backend.entered.is_set() and backend.calls == 0
    backend.gate.set()  # the batch inside the runner finishes, after the deadline
    started = time.monotonic()
    wait_until(lambda: gateway.pool.admitted == 0, timeout=5)
    assert time.monotonic() - started < 1.0
    assert backend.calls == 1 and bands == [] and renders == []
    # The same request within its deadline does all of it.
    gateway.settings.request_timeout = 30.0
    assert client.post("/v1/segment", params=params, content=encode(scene_array(200, 300))).status_code == 200
    assert bands and renders


def test_backend_unavailable_is_503_and_recovers(gated, scene_png, caplog):
    client, backend = gated
    backend.unavailable = True
    backend.gate.set()
    with caplog.at_level("ERROR", logger="serving.api.errors"):
        response = client.post("/v1/segment", content=scene_png)
    body = assert_error(response, 503, "backend_unavailable")
    assert response.headers["retry-after"] == "7"
    # The public answer names no internal host and no library message; the log has both, under the
    # incident id the answer gives (issue 10: secure by default).
    assert "127.0.0.1" not in body["detail"] and "refused" not in body["detail"]
    incident = body["detail"].split("incident ")[1].split(")")[0]
    assert any(incident in record.getMessage() and "Triton at 127.0.0.1:1 refused" in record.getMessage()
               for record in caplog.records)
    backend.unavailable = False
    assert client.post("/v1/segment", content=scene_png).status_code == 200


def test_unexpected_errors_are_json_500_and_the_server_goes_on(gated, scene_png):
    client, backend = gated
    backend.gate.set()
    original = GatedRunner.__call__
    GatedRunner.__call__ = lambda self, batch: np.zeros((1, 1), dtype=np.float32)  # a runner that misbehaves
    try:
        response = TestClient(client.app, raise_server_exceptions=False).post("/v1/segment", content=scene_png)
    finally:
        GatedRunner.__call__ = original
    body = assert_error(response, 500, "internal_error")
    # No library message or exception name in the public answer (it is in the log, by incident id).
    assert "ValueError" not in body["detail"] and "shape" not in body["detail"] and "incident" in body["detail"]
    assert client.post("/v1/segment", content=scene_png).status_code == 200
