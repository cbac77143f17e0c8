"""The gateway answers what evaluation writes: same backend pixel for pixel, PyTorch vs ONNX Runtime >= 99.99%.

On the synthetic dataset's val split with the export fixture's tiny_psp: `sceneparse test`'s
library (`evaluate_dataset`, PyTorch) and its `predict_items` with the gateway's ONNX Runtime
runner write gray PNGs; the gateway's `output=label` PNGs are compared with both.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.main import create_app
from serving.pipeline import InferenceOptions, PipelineSpec
from serving.repository import ModelRepository
from serving.settings import Settings
from tests.serving.conftest import png_array

MODEL = "tiny_psp"


@pytest.fixture(scope="module")
def evaluation(tiny_repository, synthetic_dataset, tmp_path_factory):
    """(cfg, items): the tiny_psp config pointed at the synthetic val split."""
    from training.evaluate import read_items

    work = tmp_path_factory.mktemp("evaluation")
    cfg = dict(tiny_repository.configs[MODEL]) | {
        "data_root": str(synthetic_dataset.root), "test_list": str(synthetic_dataset.val_list), "split": "val",
        "model_path": str(tiny_repository.checkpoints[MODEL]), "save_folder": str(work / "torch"),
        "test_gpu": [], "ignore_label": 255,
    }
    return cfg, read_items(cfg), work


@pytest.fixture(scope="module")
def gateway_labels(tiny_repository, evaluation):
    _, items, _ = evaluation
    settings = Settings(repository=tiny_repository.root, poll_interval=0, ort_threads=1)
    labels = {}
    with TestClient(create_app(settings)) as client:
        for item in items:
            response = client.post("/v1/segment", params={"model": MODEL, "output": "label"},
                                   content=item.image_path.read_bytes())
            assert response.status_code == 200, response.text
            labels[item.name] = png_array(response.content)
    return labels


def test_gateway_equals_evaluation_with_the_same_backend(tiny_repository, evaluation, gateway_labels):
    from training.datasets import dataset_info_for_config
    from training.evaluate import inference_options, pipeline_spec, predict_items

    cfg, items, work = evaluation
    repository = ModelRepository(tiny_repository.root)
    meta = repository.read_metadata(MODEL)
    # The gateway takes the geometry from the metadata, evaluation from the config: they agree.
    assert PipelineSpec.from_metadata(meta) == pipeline_spec(cfg)
    assert InferenceOptions(tuple(meta.test_scales), meta.flip, meta.stride_rate) == inference_options(cfg)
    runner = OnnxRuntimeBackend(device="cpu", threads=1).open(repository, meta)
    palette = np.asarray(dataset_info_for_config(cfg).palette, dtype=np.uint8)
    predict_items(items, runner, pipeline_spec(cfg), inference_options(cfg), work / "onnx", palette, progress=False)
    for item in items:
        written = np.asarray(Image.open(work / "onnx" / "gray" / f"{item.name}.png"))
        assert np.array_equal(gateway_labels[item.name], written), item.name
    assert len({int(v) for label in gateway_labels.values() for v in np.unique(label)}) >= 3  # a real mask


def test_gateway_agrees_with_pytorch_evaluation(evaluation, gateway_labels):
    import torch

    from training.evaluate import evaluate_dataset

    cfg, items, work = evaluation
    torch.set_num_threads(1)
    evaluate_dataset(cfg, progress=False, write_report_files=False)
    agree = total = 0
    for item in items:
        torch_label = np.asarray(Image.open(work / "torch" / "gray" / f"{item.name}.png"))
        agree += int((torch_label == gateway_labels[item.name]).sum())
        total += torch_label.size
    assert agree / total >= 0.9999, f"{agree}/{total} pixels agree"
