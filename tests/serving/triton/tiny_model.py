"""A stand-in repository for the Triton tests when the export fixture `tiny_repository` is absent.

A two-layer conv net exported with torch.onnx.export and published with
ModelRepository.publish_version, with an onnxruntime_onnx config.pbtxt as a Triton user writes it.
"""

from __future__ import annotations

from pathlib import Path

from serving.repository import ModelMetadata, ModelRepository, colors_text, labels_text

CLASSES = ["sky", "road", "tree", "car"]
PALETTE = [[70, 130, 180], [128, 64, 128], [107, 142, 35], [0, 0, 142]]
CROP = 33


def production_config(name: str, classes: int, crop: int, max_batch_size: int = 8) -> str:
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 3, {crop}, {crop} ] }} ]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ {classes}, {crop}, {crop} ] }} ]
dynamic_batching {{ }}
instance_group [ {{ kind: KIND_AUTO count: 1 }} ]
version_policy: {{ latest: {{ num_versions: 2 }} }}
"""


def publish_tiny_model(repository: ModelRepository, name: str = "tiny", seed: int = 0) -> int:
    """Export a seeded random conv net into a new version of `name`; returns the version number."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, len(CLASSES), 3, padding=1)
    ).eval()

    def populate(staging: Path) -> ModelMetadata:
        example = torch.zeros(1, 3, CROP, CROP)
        torch.onnx.export(
            net, (example,), str(staging / "model.onnx"), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
        )
        return ModelMetadata(
            name=name, version=0, arch="psp", layers=18, dataset="tiny", classes=CLASSES, palette=PALETTE,
            crop_h=CROP, crop_w=CROP, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
            base_size=48, max_batch_size=8,
        )

    files = {
        "config.pbtxt": production_config(name, len(CLASSES), CROP),
        "labels.txt": labels_text(CLASSES),
        "colors.txt": colors_text(PALETTE),
    }
    version, _ = repository.publish_version(name, populate, model_files=files)
    return version
