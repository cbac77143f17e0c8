"""config.pbtxt: valid by Triton's own schema (the model_config protobuf that tritonclient ships)."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.triton_config import TritonModelConfig, preferred_batch_sizes


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_config_parses_with_every_tensor_named_and_typed(fmt, precision):
    text = TritonModelConfig("ade20k_pspnet50", fmt, (3, 473, 473), (150, 60, 60), precision=precision,
                             max_batch_size=8, num_versions=3).to_text()
    config = parse(text)
    dtype = model_config_pb2.TYPE_FP16 if precision == "fp16" else model_config_pb2.TYPE_FP32
    assert config.name == "ade20k_pspnet50"
    assert config.platform == {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}[fmt]
    assert config.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("input" if fmt == "onnx" else "INPUT__0", dtype, [3, 473, 473])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("logits" if fmt == "onnx" else "OUTPUT__0", dtype, [150, 60, 60])]
    assert config.output[0].label_filename == "labels.txt"
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert config.version_policy.latest.num_versions == 3
    assert len(config.instance_group) == 1 and config.instance_group[0].count == 1
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO


def test_onnx_config_carries_the_small_gpu_settings():
    config = parse(TritonModelConfig("m", "onnx", (3, 65, 65), (6, 65, 65), gpu_mem_limit=3 << 30).to_text())
    params = {key: value.string_value for key, value in config.parameters.items()}
    assert params["cudnn_conv_algo_search"] == "1"  # HEURISTIC: no exhaustive workspace probing
    assert params["arena_extend_strategy"] == "1"  # kSameAsRequested: no power-of-two growth
    assert params["gpu_mem_limit"] == str(3 << 30)
    assert config.optimization.cuda.graphs is False
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator  # no TensorRT
    assert accelerator.name == "cuda" and dict(accelerator.parameters) == {"cudnn_conv_use_max_workspace": "0"}


def test_instance_kind_and_batch_size_one():
    config = parse(TritonModelConfig("m", "onnx", (3, 33, 33), (2, 5, 5), max_batch_size=1,
                                     instance_kind="KIND_CPU", instance_count=2).to_text())
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.instance_group[0].count == 2
    assert list(config.dynamic_batching.preferred_batch_size) == [1]


@pytest.mark.parametrize(("max_batch", "expected"), [(1, [1]), (2, [2]), (4, [2, 4]), (6, [2, 4, 6]), (8, [2, 4, 8])])
def test_preferred_batch_sizes_never_exceed_the_maximum(max_batch, expected):
    assert preferred_batch_sizes(max_batch) == expected


@pytest.mark.parametrize("bad", [dict(fmt="tensorrt"), dict(precision="int8"), dict(max_batch_size=0),
                                 dict(instance_kind="KIND_TPU"), dict(output_dims=(0, 5, 5))])
def test_invalid_settings_are_refused(bad):
    settings = dict(name="m", fmt="onnx", input_dims=(3, 33, 33), output_dims=(2, 5, 5)) | bad
    with pytest.raises(ValueError):
        TritonModelConfig(**settings).to_text()


@pytest.mark.parametrize(("fmt", "precision"), [("onnx", "fp32"), ("onnx", "fp16"), ("torchscript", "fp32")])
def test_warmup_runs_the_crop_at_the_largest_batch(fmt, precision):
    config = parse(TritonModelConfig("m", fmt, (3, 473, 473), (150, 473, 473), precision=precision,
                                     max_batch_size=8).to_text())
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 8
    (name, tensor), = warmup.inputs.items()
    assert name == ("input" if fmt == "onnx" else "INPUT__0")
    dtype = model_config_pb2.TYPE_FP16 if precision == "fp16" else model_config_pb2.TYPE_FP32
    assert (tensor.data_type, list(tensor.dims), tensor.zero_data) == (dtype, [3, 473, 473], True)
    assert not parse(TritonModelConfig("m", fmt, (3, 33, 33), (2, 33, 33), warmup=False).to_text()).model_warmup


def test_triton_queue_is_bounded_and_rejects_past_it():
    config = parse(TritonModelConfig("m", "onnx", (3, 33, 33), (2, 33, 33), max_queue_size=5).to_text())
    policy = config.dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 5
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert policy.default_timeout_microseconds == 30_000_000 and not policy.allow_timeout_override
    default = parse(TritonModelConfig("m", "onnx", (3, 33, 33), (2, 33, 33)).to_text())
    assert default.dynamic_batching.default_queue_policy.max_queue_size == 16  # Triton's own default: unbounded
    with pytest.raises(ValueError, match="max_queue_size"):
        TritonModelConfig("m", "onnx", (3, 33, 33), (2, 33, 33), max_queue_size=0).to_text()
