"""int8 export: ONNX Runtime static quantization calibrated on the pipeline's windows, and its gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

from export import ExportError, ExportOptions, export_checkpoint
from export.calibration import pipeline_windows, read_list_images
from export.cli import main
from export.onnx_file import OrtRunner
from export.quantize import Int8GateError, QuantizationOptions
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.pipeline import InferenceOptions, PipelineSpec
from serving.repository import ModelRepository
from serving.segmentation import SegmentOptions, segment_image
from tests.export.test_bad_input import write_yaml_config
from tests.fixtures.int8 import TINY_INT8_GATE, int8_options


def _producers(model) -> dict[str, onnx.NodeProto]:
    return {output: node for node in model.graph.node for output in node.output}


def test_int8_version_carries_both_gate_figures(tiny_int8):
    repo = ModelRepository(tiny_int8.root)
    meta = repo.read_metadata(tiny_int8.name)
    gate = meta.parity["int8"]
    assert meta.precision == "int8" and meta.files == {"onnx": "model.onnx"}
    assert gate["passed"] is True and gate["criteria"] == TINY_INT8_GATE
    assert TINY_INT8_GATE["min_agreement"] <= gate["argmax_agreement"] <= 1.0
    assert gate["agreement"]["images"] == 4 and gate["agreement"]["crops"] == 16  # 2 windows x flip each
    assert gate["miou"]["images"] == 8 and 0.0 < gate["miou"]["int8"] <= 1.0
    assert gate["miou_drop"] == pytest.approx(gate["miou"]["fp32"] - gate["miou"]["int8"])
    assert gate["miou_drop"] <= TINY_INT8_GATE["max_miou_drop"]
    # The version's metrics are the int8 graph's own, through the pipeline.
    assert meta.metrics["mIoU"] == gate["miou"]["int8"] and len(meta.metrics["per_class"]) == 6
    # Calibration and agreement never share an image.
    assert not set(gate["calibration"]["images"]) & set(gate["held_out_images"])
    # Precision is not in the tensors: an int8 (QDQ) graph takes and returns float32.
    config = model_config_pb2.ModelConfig()
    text_format.Parse((tiny_int8.root / tiny_int8.name / "config.pbtxt").read_text(), config)
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert config.output[0].data_type == model_config_pb2.TYPE_FP32


def test_int8_graph_is_qdq_per_channel_with_the_classifier_in_fp32(tiny_int8):
    path = ModelRepository(tiny_int8.root).model_file(tiny_int8.name, 1)
    model = onnx.load(str(path))
    producers = _producers(model)
    initializers = {init.name: init for init in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = [n for n in convs if n.input[1] in producers and producers[n.input[1]].op_type == "DequantizeLinear"]
    assert len(quantized) == len(convs) - 1, "every conv but the classifier takes int8 weights"
    (classifier,) = [n for n in convs if n not in quantized]
    assert classifier.name == "/cls/cls.4/Conv" and classifier.input[1] in initializers
    # Per-channel: one weight scale per output channel.
    first = producers[quantized[0].input[1]]
    scale = onnx.numpy_helper.to_array(initializers[first.input[1]])
    weight = onnx.numpy_helper.to_array(initializers[producers[first.input[0]].input[0]]) \
        if first.input[0] in producers else onnx.numpy_helper.to_array(initializers[first.input[0]])
    assert scale.shape == (weight.shape[0],) and weight.dtype == np.int8
    # It runs, and its logits are close to the fp32 export's.
    batch = np.random.default_rng(0).standard_normal((2, 3, 65, 65)).astype(np.float32)
    logits = OrtRunner(path, threads=1)(batch)
    assert logits.shape == (2, 6, 65, 65) and logits.dtype == np.float32 and np.isfinite(logits).all()


def test_calibration_windows_are_the_ones_serving_feeds_the_network(tiny_int8, synthetic_dataset):
    repo = ModelRepository(tiny_int8.root)
    meta = repo.read_metadata(tiny_int8.name)
    spec, options = PipelineSpec.from_metadata(meta), SegmentOptions.defaults_for(meta)
    runner = OnnxRuntimeBackend(device="cpu", threads=1).open(repo, meta)
    fed: list[np.ndarray] = []

    class Recording:
        max_batch_size = runner.max_batch_size

        def __call__(self, batch):
            fed.append(batch.copy())
            return runner(batch)

    image = np.asarray(Image.open(read_list_images(synthetic_dataset.val_list, synthetic_dataset.root)[0].image_path))
    segment_image(image, Recording(), meta, options, spec=spec)  # the gateway's own function
    windows = pipeline_windows(image, spec, options.pipeline_options())
    assert np.array_equal(windows, np.concatenate(fed))
    calibration = meta.parity["int8"]["calibration"]
    assert len(calibration["images"]) == 4
    expected = sum(len(pipeline_windows(np.asarray(Image.open(p).convert("RGB")), spec, options.pipeline_options()))
                   for p in calibration["images"])
    assert calibration["windows"] == expected == meta.parity["int8"]["quantization"]["calibration_windows"]


def _flat_images_list(directory: Path, count: int = 4) -> Path:
    directory.mkdir()
    lines = []
    for index in range(count):
        Image.fromarray(np.full((64, 80, 3), 60 + 40 * index, np.uint8)).save(directory / f"flat_{index}.png")
        lines.append(f"{directory / f'flat_{index}.png'}\n")  # absolute: data_root does not apply
    (directory / "list.txt").write_text("".join(lines))
    return directory / "list.txt"


def test_a_bad_calibration_fails_the_gate_and_publishes_nothing(tiny_int8, tmp_path):
    # Flat grey images: every activation range is far too narrow for real scenes.
    flat = _flat_images_list(tmp_path / "flat")
    config = {**tiny_int8.config, "train_list": str(flat)}
    repository = tmp_path / "repo"
    with pytest.raises(Int8GateError) as failure:
        export_checkpoint(config, tiny_int8.checkpoint, repository,
                          ExportOptions(max_batch_size=4, int8=int8_options()), name="bad_int8")
    figures = failure.value.figures
    assert figures["passed"] is False
    assert figures["argmax_agreement"] < TINY_INT8_GATE["min_agreement"]
    assert figures["miou_drop"] > TINY_INT8_GATE["max_miou_drop"]
    message = str(failure.value)
    assert f"argmax agreement with fp32 {100 * figures['argmax_agreement']:.3f}%" in message
    assert f"drop {100 * figures['miou_drop']:+.2f} points" in message and "nothing was published" in message
    assert not repository.exists() or not any(repository.rglob("sceneparse.json"))


def test_int8_lives_under_its_own_model_name(tiny_repository, tiny_int8, tmp_path):
    repository = tiny_repository.copy_to(tmp_path / "repo")
    with pytest.raises(ExportError, match="precision is part of a model's tensor contract.*--name tiny_psp_int8"):
        export_checkpoint(tiny_int8.config, tiny_int8.checkpoint, repository,
                          ExportOptions(int8=int8_options()), name="tiny_psp")
    # ... and the other way round: fp32 into the int8 model.
    with pytest.raises(ExportError, match="serves int8 versions"):
        export_checkpoint(tiny_int8.config, tiny_int8.checkpoint, tiny_int8.root, name=tiny_int8.name)


@pytest.mark.parametrize(("options", "message"), [
    (QuantizationOptions(min_agreement=1.5), "--min-agreement must lie within [0, 1]"),
    (QuantizationOptions(calibration_images=0), "--calibration-images must be >= 1"),
    (QuantizationOptions(keep_fp32=("head",)), "unknown group(s) ['head']"),
])
def test_bad_int8_options_are_refused_before_any_work(tiny_int8, tmp_path, options, message):
    with pytest.raises(ExportError) as failure:
        export_checkpoint(tiny_int8.config, tmp_path / "never_read.pth", tmp_path / "repo",
                          ExportOptions(int8=options))
    assert message in str(failure.value)


def test_int8_without_calibration_images_is_a_clear_error(tiny_int8, tmp_path):
    config = {k: v for k, v in tiny_int8.config.items() if k != "train_list"}
    with pytest.raises(ExportError, match="int8 export needs calibration images: give --calibration LIST"):
        export_checkpoint(config, tiny_int8.checkpoint, tmp_path / "repo", ExportOptions(int8=int8_options()))
    missing = {**tiny_int8.config, "train_list": str(tmp_path / "nope.txt")}
    with pytest.raises(ExportError, match="calibration list: .*nope.txt: list file does not exist"):
        export_checkpoint(missing, tiny_int8.checkpoint, tmp_path / "repo",
                          ExportOptions(int8=int8_options()))
    assert not (tmp_path / "repo").exists()


def test_cli_int8_arguments(tiny_int8, tmp_path, capsys):
    config = write_yaml_config(tiny_int8.config, tmp_path / "tiny.yaml")
    base = ["--config", str(config), "--checkpoint", str(tiny_int8.checkpoint), "--repository", str(tmp_path / "r")]
    for extra, fragment in ((["--calibration-images", "3"], "--calibration-images go(es) with --precision int8"),
                            (["--fp16", "--precision", "int8"], "--fp16 contradicts --precision int8")):
        with pytest.raises(SystemExit) as exited:
            main([*base, *extra])
        assert exited.value.code == 2 and fragment in capsys.readouterr().err
    code = main([*base, "--precision", "int8", "--format", "torchscript", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "int8 is exported as ONNX only" in err and "Traceback" not in err


def test_calibration_windows_follow_the_protocol_scales_and_flip():
    spec = PipelineSpec(33, 33, 6, (123.7, 116.3, 103.5), (58.4, 57.1, 57.4), 48)
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    one = pipeline_windows(image, spec, InferenceOptions(scales=(1.0,), flip=False))
    both = pipeline_windows(image, spec, InferenceOptions(scales=(1.0,), flip=True))
    scaled = pipeline_windows(image, spec, InferenceOptions(scales=(1.0, 1.5), flip=False))
    assert one.shape[1:] == (3, 33, 33) and len(both) == 2 * len(one) and len(scaled) > len(one)
    # A window and its mirror come as a pair, as the pipeline sends them.
    assert np.array_equal(both[1], both[0][:, :, ::-1])
