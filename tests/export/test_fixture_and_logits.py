"""The shared tiny_repository fixture, and logits at the crop vs at stride 8 giving the same masks."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export import ExportOptions, export_checkpoint
from serving.pipeline import InferenceOptions, PipelineSpec, predict_label, predict_probabilities
from serving.repository import ModelRepository
from training.data.synthetic import class_styles, render_scene


class OrtRunner:
    """The serving contract's Runner over an ONNX Runtime CPU session."""

    def __init__(self, repository: ModelRepository, name: str, version: int | None = None):
        self.meta = repository.read_metadata(name, version)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(repository.model_file(name, self.meta.version)), options,
                                            providers=["CPUExecutionProvider"])
        self.max_batch_size = self.meta.max_batch_size

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.meta.input_name: batch})[0]


def scenes(count: int, h: int = 64, w: int = 80, seed: int = 7):
    styles = class_styles(6)
    return [render_scene(styles, h, w, np.random.default_rng([seed, i])) for i in range(count)]


def test_tiny_repository_holds_two_meaningful_models(tiny_repository):
    repository = ModelRepository(tiny_repository.root)
    assert repository.list_models() == ["tiny_psa", "tiny_psp"]
    assert set(tiny_repository.models) == {"tiny_psp", "tiny_psa"}
    for name in ("tiny_psp", "tiny_psa"):
        meta = repository.read_metadata(name)
        assert (meta.version, meta.layers, meta.num_classes, meta.crop_h, meta.crop_w) == (1, 18, 6, 65, 65)
        assert (meta.max_batch_size, meta.base_size, meta.output_hw) == (4, 80, None)
        assert meta.parity["passed"] and meta.dataset == "synthetic"
        stored = torch.load(tiny_repository.checkpoints[name], weights_only=True)
        assert all(key.startswith("module.") for key in stored["state_dict"])  # the original release layout
        assert meta.checkpoint_name == tiny_repository.checkpoints[name].name
        text_format.Parse((tiny_repository.root / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert repository.read_metadata("tiny_psa").config["psa_type"] == 2
    assert repository.read_metadata("tiny_psp").arch == "psp" and repository.read_metadata("tiny_psa").arch == "psa"

    # Masks mean something: several classes per image, and they follow the rendered scene.
    for name in ("tiny_psp", "tiny_psa"):
        runner = OrtRunner(repository, name)
        spec = PipelineSpec.from_metadata(runner.meta)
        accuracy, classes = [], []
        for image, label in scenes(4):
            mask = predict_label(image, runner, spec, InferenceOptions(flip=False))
            accuracy.append((mask == label).mean())
            classes.append(len(np.unique(mask)))
        assert max(classes) >= 3, (name, classes)
        assert np.mean(accuracy) > 0.3, (name, accuracy)  # chance is about 1/6


def test_stride8_logits_give_the_gateway_the_same_masks(tiny_repository, tmp_path):
    source = tiny_repository.configs["tiny_psp"], tiny_repository.checkpoints["tiny_psp"]
    result = export_checkpoint(*source, tmp_path,
                               ExportOptions(logits="feature", max_batch_size=4, simplify=False),
                               name="tiny_psp_feature")
    assert result.metadata.output_hw == [9, 9]
    assert result.parity["pipeline_upsample"]["max_abs_delta"] <= 1e-4
    config = text_format.Parse((tmp_path / "tiny_psp_feature" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert list(config.output[0].dims) == [6, 9, 9]

    crop_runner = OrtRunner(ModelRepository(tiny_repository.root), "tiny_psp")
    feature_runner = OrtRunner(ModelRepository(tmp_path), "tiny_psp_feature")
    spec = PipelineSpec.from_metadata(crop_runner.meta)
    options = InferenceOptions(scales=(0.75, 1.5), flip=True)  # one and several windows, flips, two scales
    for image, _ in scenes(2, h=70, w=100, seed=11):
        crop_probs = predict_probabilities(image, crop_runner, spec, options)
        feature_probs = predict_probabilities(image, feature_runner, spec, options)
        np.testing.assert_allclose(feature_probs, crop_probs, atol=1e-5)
        np.testing.assert_array_equal(predict_label(image, feature_runner, spec, options),
                                      predict_label(image, crop_runner, spec, options))
