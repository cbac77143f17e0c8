"""Every endpoint and output type of the gateway, through FastAPI's TestClient (real ONNX Runtime)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.imaging import decode_image
from serving.main import create_app
from serving.pipeline import PipelineSpec
from serving.segmentation import SegmentOptions, segment_image
from serving.settings import Settings
from tests.serving.conftest import encode, png_array, scene_array


def gateway_settings(repository, **changes) -> Settings:
    return Settings(repository=repository.root, poll_interval=0, ort_threads=1, **changes)


@pytest.fixture(scope="module")
def client(gateway_source_repository):
    with TestClient(create_app(gateway_settings(gateway_source_repository))) as client:
        yield client


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return scene_array(60, 80, seed=7)


@pytest.fixture(scope="module")
def expected_label(gateway_source_repository, model_name, scene) -> np.ndarray:
    """The label map of the shared pipeline run directly on the same runner type."""
    meta = gateway_source_repository.read_metadata(model_name)
    runner = OnnxRuntimeBackend(device="cpu", threads=1).open(gateway_source_repository, meta)
    options = SegmentOptions.defaults_for(meta, max_side=Settings().max_side)
    return segment_image(scene, runner, meta, options, spec=PipelineSpec.from_metadata(meta))


def test_label_output_equals_the_pipeline(client, model_name, scene, expected_label):
    response = client.post("/v1/segment", params={"output": "label", "model": model_name}, content=encode(scene))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model-name"] == model_name
    assert int(response.headers["x-model-version"]) >= 1
    label = png_array(response.content)
    assert label.dtype == np.uint8 and label.shape == scene.shape[:2]
    assert np.array_equal(label, expected_label)


def test_color_output_is_the_palette_mask(client, gateway_source_repository, model_name, scene, expected_label):
    palette = np.asarray(gateway_source_repository.read_metadata(model_name).palette, dtype=np.uint8)
    response = client.post("/v1/segment", files={"image": ("scene.png", encode(scene), "image/png")})
    assert response.status_code == 200
    rgb = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    assert np.array_equal(rgb, palette[expected_label])


def test_overlay_output_blends_photo_and_mask(client, gateway_source_repository, model_name, scene, expected_label):
    palette = np.asarray(gateway_source_repository.read_metadata(model_name).palette, dtype=np.float32)
    response = client.post("/v1/segment", params={"output": "overlay", "alpha": 0.25}, content=encode(scene))
    assert response.status_code == 200
    blended = png_array(response.content).astype(np.float32)
    expected = 0.75 * scene.astype(np.float32) + 0.25 * palette[expected_label]
    assert np.abs(blended - expected).max() <= 0.5 + 1e-3


def test_json_output_lists_classes_present_and_embeds_pngs(client, gateway_source_repository, model_name,
                                                          scene, expected_label):
    meta = gateway_source_repository.read_metadata(model_name)
    response = client.post("/v1/segment", params={"output": "json", "png": ["color", "label"]}, content=encode(scene))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["model"], body["width"], body["height"]) == (model_name, 80, 60)
    ids, counts = np.unique(expected_label, return_counts=True)
    assert {entry["id"] for entry in body["classes"]} == set(ids.tolist())
    for entry in body["classes"]:
        assert entry["name"] == meta.classes[entry["id"]]
        assert entry["color"] == meta.palette[entry["id"]]
        assert entry["fraction"] == pytest.approx(counts[ids.tolist().index(entry["id"])] / expected_label.size, abs=1e-6)
    assert body["tiles"] >= 1
    assert set(body["png"]) == {"color", "label"}
    assert np.array_equal(png_array(base64.b64decode(body["png"]["label"])), expected_label)
    plain = client.post("/v1/segment", params={"output": "json"}, content=encode(scene)).json()
    assert "png" not in plain  # no PNG asked for: no empty field


def test_multipart_and_raw_body_agree_and_content_type_is_ignored(client, scene):
    data = encode(scene)
    raw = client.post("/v1/segment", params={"output": "label"}, content=data,
                      headers={"content-type": "text/plain"})
    multipart = client.post("/v1/segment", params={"output": "label"},
                            files={"image": ("photo.jpg", data, "image/jpeg")})
    assert raw.status_code == multipart.status_code == 200
    assert raw.content == multipart.content


def test_jpeg_input_and_exif_orientation_keep_the_input_size(client):
    stored = scene_array(30, 50)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 CCW to display: portrait
    data = encode(Image.fromarray(stored), "JPEG", quality=90, exif=exif)
    response = client.post("/v1/segment", params={"output": "label"}, content=data)
    assert response.status_code == 200
    assert png_array(response.content).shape == (50, 30)


def test_max_side_downscales_inference_but_not_the_mask(client, scene):
    big = np.asarray(Image.fromarray(scene).resize((400, 300), Image.Resampling.NEAREST))
    small = client.post("/v1/segment", params={"output": "json", "max_side": 40}, content=encode(big)).json()
    full = client.post("/v1/segment", params={"output": "json", "max_side": 400}, content=encode(big)).json()
    assert (small["width"], small["height"]) == (400, 300) == (full["width"], full["height"])
    label = client.post("/v1/segment", params={"output": "label", "max_side": 40}, content=encode(big))
    assert png_array(label.content).shape == (300, 400)


def test_max_side_never_shrinks_below_the_models_base_size(client, gateway_source_repository, model_name, scene):
    # The pipeline scales every image to base_size anyway: a smaller max_side must not cost detail.
    side = gateway_source_repository.read_metadata(model_name).base_size
    assert side > 40
    image = np.asarray(Image.fromarray(scene).resize((side, side * 3 // 4), Image.Resampling.NEAREST))
    shrunk = client.post("/v1/segment", params={"model": model_name, "output": "label", "max_side": 32},
                         content=encode(image))
    full = client.post("/v1/segment", params={"model": model_name, "output": "label", "max_side": 2048},
                       content=encode(image))
    assert shrunk.status_code == full.status_code == 200
    np.testing.assert_array_equal(png_array(shrunk.content), png_array(full.content))


def test_scales_and_flip_change_the_work_done(client, scene):
    def tiles(**params) -> int:
        response = client.post("/v1/segment", params={"output": "json", **params}, content=encode(scene))
        assert response.status_code == 200, response.text
        return response.json()["tiles"]

    one = tiles(scales="1.0", flip="false")
    assert tiles(scales="1.0", flip="true") == 2 * one
    assert tiles(scales="0.5,1.0", flip="false") > one
    assert tiles(scales=["0.5", "1.0"], flip="false") == tiles(scales="0.5,1.0", flip="false")


@pytest.mark.parametrize("params", [
    {"output": "jpeg"},
    {"alpha": "1.5"},
    {"alpha": "-0.1"},
    {"alpha": "x"},
    {"scales": "0.1"},
    {"scales": "3"},
    {"scales": "abc"},
    {"scales": "1,1,1,1,1,1,1"},
    {"flip": "sometimes"},
    {"max_side": "8"},
    {"max_side": "100000"},
    {"png": "gif"},
    {"unknown_option": "1"},
])
def test_bad_parameters_are_422(client, scene_png, params):
    response = client.post("/v1/segment", params=params, content=scene_png)
    assert response.status_code == 422, (params, response.text)
    body = response.json()
    assert body["error"] == "invalid_parameter" and body["detail"]


def test_missing_multipart_field_is_422(client, scene_png):
    response = client.post("/v1/segment", files={"picture": ("a.png", scene_png, "image/png")})
    assert response.status_code == 422 and response.json()["error"] == "missing_image"


def test_unknown_model_is_404(client, scene_png):
    response = client.post("/v1/segment", params={"model": "no-such-model"}, content=scene_png)
    assert response.status_code == 404 and response.json()["error"] == "model_not_found"
    assert client.get("/v1/models/no-such-model/legend").status_code == 404
    assert client.get("/v1/models/..%2Fetc/legend").status_code == 404


def test_models_and_legend(client, gateway_source_repository, model_name):
    models = client.get("/v1/models").json()["models"]
    entry = next(m for m in models if m["name"] == model_name)
    meta = gateway_source_repository.read_metadata(model_name)
    assert entry["version"] == gateway_source_repository.served_version(model_name)
    assert entry["versions"] == gateway_source_repository.list_versions(model_name)
    assert entry["dataset"] == meta.dataset and entry["classes"] == meta.classes
    assert entry["crop_size"] == [meta.crop_h, meta.crop_w] and entry["backend"] == "onnxruntime"
    assert sum(m["default"] for m in models) == 1
    legend = client.get(f"/v1/models/{model_name}/legend").json()
    assert [c["name"] for c in legend["classes"]] == meta.classes
    assert [c["color"] for c in legend["classes"]] == [list(c) for c in meta.palette[: meta.num_classes]]
    assert legend["classes"][0]["hex"].startswith("#") and len(legend["classes"][0]["hex"]) == 7


def test_health_readiness_and_metrics(client, scene_png):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    client.post("/v1/segment", content=scene_png)
    client.post("/v1/segment", params={"model": "nope"}, content=scene_png)
    text = client.get("/metrics").text
    assert 'sceneparse_http_requests_total{method="POST",route="/v1/segment",status="200"}' in text
    assert 'sceneparse_http_requests_total{method="POST",route="/v1/segment",status="404"}' in text
    for stage in ("decode", "preprocess", "inference", "stitch", "encode"):
        count = next(line for line in text.splitlines()
                     if line.startswith(f'sceneparse_stage_duration_seconds_count{{stage="{stage}"}}'))
        assert float(count.split()[-1]) >= 1, stage
    assert "sceneparse_queue_depth 0.0" in text
    assert "sceneparse_tiles_per_request_count" in text
    assert 'sceneparse_model_version{model="' in text


def test_openapi_docs_and_web_page(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/segment", "/v1/models", "/v1/models/{name}/legend", "/healthz", "/readyz", "/metrics",
            "/v1/admin/reload"} <= set(spec["paths"])
    body = spec["paths"]["/v1/segment"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    assert set(spec["components"]["securitySchemes"]) == {"APIKeyHeader", "HTTPBearer"}  # /docs "Authorize"
    assert "security" not in spec["paths"]["/healthz"]["get"]
    docs = client.get("/docs").text
    assert "swagger" in docs.lower() and "/docs/assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    script = client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert len(script.content) > 100_000
    assert client.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert client.get("/docs/assets/app.js").status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and 'id="dropzone"' in page.text
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/missing.js").status_code == 404
    assert client.get("/static/..%2Fmain.py").status_code == 404
    assert client.get("/no/such/route").json()["error"] == "not_found"


def test_cors_is_closed_by_default(client):
    preflight = client.options("/v1/segment", headers={"Origin": "https://example.org",
                                                       "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_origins_can_be_opened(gateway_source_repository, scene_png):
    settings = gateway_settings(gateway_source_repository, cors_origins=["https://app.example"])
    with TestClient(create_app(settings)) as client:
        allowed = client.options("/v1/segment", headers={"Origin": "https://app.example",
                                                         "Access-Control-Request-Method": "POST"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = client.post("/v1/segment", content=scene_png, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        response = client.post("/v1/segment", content=scene_png, headers={"Origin": "https://app.example"})
        assert "x-model-version" in response.headers["access-control-expose-headers"].lower()


def test_gateway_mask_equals_offline_decode_plus_pipeline(client, gateway_source_repository, model_name):
    """The gateway's answer for a JPEG equals decode_image + segment_image run by hand."""
    data = encode(scene_array(45, 70, seed=11), "JPEG", quality=80)
    meta = gateway_source_repository.read_metadata(model_name)
    runner = OnnxRuntimeBackend(device="cpu", threads=1).open(gateway_source_repository, meta)
    label = segment_image(decode_image(data, 10**7), runner, meta, SegmentOptions.defaults_for(meta, 1024))
    response = client.post("/v1/segment", params={"output": "label"}, content=data)
    assert np.array_equal(png_array(response.content), label)
