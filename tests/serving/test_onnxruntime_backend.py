"""The ONNX Runtime backend: real sessions on the repository's exported models, FP16 I/O, provider choice."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from serving.backends import onnxruntime as ort_backend
from serving.backends.factory import create_backend
from serving.backends.onnxruntime import OnnxRuntimeBackend, choose_providers, cuda_provider_options
from serving.repository import ModelMetadata, ModelRepository, RepositoryError
from serving.settings import Settings, available_cores


def random_batch(meta: ModelMetadata, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, meta.crop_h, meta.crop_w)).astype(np.float32)


def reference_logits(path: Path, meta: ModelMetadata, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([meta.output_name], {meta.input_name: batch})[0]


def test_runner_matches_a_plain_session(gateway_source_repository, model_name):
    meta = gateway_source_repository.read_metadata(model_name)
    backend = OnnxRuntimeBackend(device="cpu", threads=1)
    runner = backend.open(gateway_source_repository, meta)
    batch = random_batch(meta, min(2, meta.max_batch_size))
    logits = runner(batch)
    assert logits.dtype == np.float32
    assert logits.shape[:2] == (batch.shape[0], meta.num_classes)
    expected = reference_logits(gateway_source_repository.model_file(model_name, meta.version), meta, batch)
    np.testing.assert_array_equal(logits, expected)
    assert runner.providers == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="max_batch_size"):
        runner(random_batch(meta, meta.max_batch_size + 1))
    runner.close()


class RecordingSession:
    """The real session, with the batch size of every run recorded."""

    def __init__(self, session):
        self.session = session
        self.runs: list[int] = []

    def run(self, outputs, feed):
        self.runs.append(next(iter(feed.values())).shape[0])
        return self.session.run(outputs, feed)


def test_a_batch_over_the_logits_budget_runs_in_slices(gateway_source_repository, model_name, monkeypatch):
    meta = gateway_source_repository.read_metadata(model_name)
    assert meta.max_batch_size >= 3
    per_window = meta.num_classes * meta.crop_h * meta.crop_w * 4
    monkeypatch.setattr("serving.pipeline.BATCH_LOGITS_BYTES", 2 * per_window)
    runner = OnnxRuntimeBackend(device="cpu", threads=1).open(gateway_source_repository, meta)
    assert runner.run_batch == 2
    runner.session = RecordingSession(runner.session)
    batch = random_batch(meta, meta.max_batch_size, seed=3)
    logits = runner(batch)
    assert runner.session.runs == [2] * (meta.max_batch_size // 2) + [1] * (meta.max_batch_size % 2)
    expected = reference_logits(gateway_source_repository.model_file(model_name, meta.version), meta, batch)
    assert logits.dtype == np.float32 and logits.shape == expected.shape
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    runner.close()


def test_session_options_suit_the_machine():
    backend = create_backend(Settings(ort_device="cpu"))
    options = backend.session_options()
    assert options.intra_op_num_threads == available_cores()
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert create_backend(Settings(ort_device="cpu", ort_threads=3)).session_options().intra_op_num_threads == 3


def test_cuda_options_bound_the_arena():
    options = cuda_provider_options(3072, device_id=1)
    assert options["gpu_mem_limit"] == 3072 * 1024 * 1024
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["cudnn_conv_use_max_workspace"] == "0"
    assert options["device_id"] == 1


def test_provider_choice(monkeypatch):
    assert choose_providers("cpu", 3072) == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert choose_providers("auto", 3072) == ["CPUExecutionProvider"]
        with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
            choose_providers("cuda", 3072)
    # With a CUDA build (onnxruntime-gpu) "auto" puts CUDA first with the memory-bounding options.
    monkeypatch.setattr(ort_backend.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    providers = choose_providers("auto", 2048)
    assert providers[0][0] == "CUDAExecutionProvider" and providers[0][1]["gpu_mem_limit"] == 2048 * 1024 * 1024
    assert providers[-1] == "CPUExecutionProvider"


def with_fp16_io(source: Path, target: Path, input_name: str, output_name: str) -> None:
    """Rewrite a float32 graph to take float16 input and give float16 logits (Casts at both ends).

    The convolutions stay float32 inside, because the CPU provider has no float16 Conv kernel.
    """
    model = onnx.load(str(source))
    graph = model.graph
    for node in graph.node:
        node.input[:] = [f"{input_name}_fp32" if name == input_name else name for name in node.input]
        node.output[:] = [f"{output_name}_fp32" if name == output_name else name for name in node.output]
    graph.node.insert(0, helper.make_node("Cast", [input_name], [f"{input_name}_fp32"], to=TensorProto.FLOAT))
    graph.node.append(helper.make_node("Cast", [f"{output_name}_fp32"], [output_name], to=TensorProto.FLOAT16))
    for value in list(graph.input) + list(graph.output):
        if value.name in {input_name, output_name}:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def test_fp16_model_gets_cast_input_and_float32_logits(writable_repository, model_name):
    repository: ModelRepository = writable_repository
    meta = repository.read_metadata(model_name)
    source = repository.model_file(model_name, meta.version)

    def populate(staging: Path) -> ModelMetadata:
        with_fp16_io(source, staging / "model.onnx", meta.input_name, meta.output_name)
        return ModelMetadata.from_dict(meta.to_dict() | {"precision": "fp16", "files": {"onnx": "model.onnx"}})

    # A model's versions share one config.pbtxt, so the fp16 graph is a model of its own.
    fp16_name = f"{model_name}_fp16"
    version, _ = repository.publish_version(fp16_name, populate)
    fp16_meta = repository.read_metadata(fp16_name, version)
    runner = OnnxRuntimeBackend(device="cpu", threads=1).open(repository, fp16_meta)
    assert runner.input_dtype == np.float16
    batch = random_batch(meta, 2, seed=1)
    logits = runner(batch)
    assert logits.dtype == np.float32
    expected = reference_logits(source, meta, batch)
    np.testing.assert_allclose(logits, expected, atol=0.05 * max(1.0, float(np.abs(expected).max())))


def test_bad_models_raise_repository_errors(writable_repository, model_name):
    repository: ModelRepository = writable_repository
    meta = repository.read_metadata(model_name)
    backend = OnnxRuntimeBackend(device="cpu", threads=1)
    with pytest.raises(RepositoryError, match="no input 'pixels'"):
        backend.open(repository, ModelMetadata.from_dict(meta.to_dict() | {"input_name": "pixels"}))
    version_dir = repository.version_dir(model_name, meta.version)
    broken = version_dir.parent / "broken"
    shutil.copytree(version_dir, broken)
    (version_dir / meta.files["onnx"]).write_bytes(b"not a protobuf")
    with pytest.raises(RepositoryError, match="onnxruntime cannot load it"):
        backend.open(repository, meta)
