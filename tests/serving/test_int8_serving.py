"""An int8 version is served like any other; /v1/models and the response headers say which precision answered."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.main import create_app
from serving.pipeline import PipelineSpec
from serving.repository import ModelRepository
from serving.segmentation import SegmentOptions, segment_image
from serving.settings import Settings
from tests.serving.conftest import encode, png_array, scene_array


@pytest.fixture(scope="module")
def repository(tiny_repository, tiny_int8, tmp_path_factory) -> ModelRepository:
    """tiny_psp (fp32) beside its int8 model tiny_psp_int8, in one repository."""
    root = tiny_repository.copy_to(tmp_path_factory.mktemp("int8-serving") / "repo")
    shutil.copytree(tiny_int8.root / tiny_int8.name, root / tiny_int8.name)
    return ModelRepository(root)


@pytest.fixture(scope="module")
def client(repository):
    with TestClient(create_app(Settings(repository=repository.root, poll_interval=0, ort_threads=1))) as client:
        yield client


def test_models_list_gives_precision_and_the_int8_gate_figures(client, repository):
    response = client.get("/v1/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert models["tiny_psp"]["precision"] == "fp32" and models["tiny_psp"]["quantization"] is None
    int8 = models["tiny_psp_int8"]
    gate = repository.read_metadata("tiny_psp_int8").parity["int8"]
    assert int8["precision"] == "int8"
    assert int8["quantization"]["argmax_agreement"] == gate["argmax_agreement"]
    assert int8["quantization"]["miou_drop"] == gate["miou_drop"]
    assert int8["quantization"]["miou_fp32"] == gate["miou"]["fp32"] and int8["quantization"]["miou_int8"] == gate["miou"]["int8"]
    assert int8["quantization"]["kept_fp32"] == ["classifier"]


@pytest.mark.parametrize(("model", "precision"), [("tiny_psp", "fp32"), ("tiny_psp_int8", "int8")])
def test_segment_headers_say_which_precision_answered(client, repository, model, precision):
    scene = scene_array(60, 80, seed=3)
    response = client.post("/v1/segment", params={"model": model, "output": "label"}, content=encode(scene))
    assert response.status_code == 200, response.text
    assert response.headers["x-model-name"] == model and response.headers["x-model-version"] == "1"
    assert response.headers["x-model-precision"] == precision
    meta = repository.read_metadata(model)
    runner = OnnxRuntimeBackend(device="cpu", threads=1).open(repository, meta)
    options = SegmentOptions.defaults_for(meta, max_side=Settings().max_side)
    expected = segment_image(scene, runner, meta, options, spec=PipelineSpec.from_metadata(meta))
    assert np.array_equal(png_array(response.content), expected)
    body = client.post("/v1/segment", params={"model": model, "output": "json"}, content=encode(scene)).json()
    assert body["precision"] == precision
