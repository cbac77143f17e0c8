"""Fixtures of the gateway tests: a writable model repository, test images, an app client.

`gateway_repository` copies the export fixture `tiny_repository` when it exists; until then it
exports a tiny conv net with torch.onnx.export and publishes it with publish_version.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.repository import ModelMetadata, ModelRepository, colors_text, labels_text

STOPGAP_CLASSES = ["sky", "road", "tree", "car", "person"]
STOPGAP_PALETTE = [[70, 130, 180], [128, 64, 128], [107, 142, 35], [0, 0, 142], [220, 20, 60]]
STOPGAP_CROP = 33


def export_stopgap_model(repository: ModelRepository, name: str = "tiny", seed: int = 0) -> int:
    """Publish a seeded two-layer conv net (crop 33, 5 classes) as a new version of `name`."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, len(STOPGAP_CLASSES), 3, padding=1),
    ).eval()

    def populate(staging: Path) -> ModelMetadata:
        torch.onnx.export(
            net, (torch.zeros(1, 3, STOPGAP_CROP, STOPGAP_CROP),), str(staging / "model.onnx"),
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
        )
        return ModelMetadata(
            name=name, version=0, arch="psp", layers=18, dataset="stopgap", classes=STOPGAP_CLASSES,
            palette=STOPGAP_PALETTE, crop_h=STOPGAP_CROP, crop_w=STOPGAP_CROP,
            mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], base_size=48, max_batch_size=4,
        )

    files = {"labels.txt": labels_text(STOPGAP_CLASSES), "colors.txt": colors_text(STOPGAP_PALETTE)}
    version, _ = repository.publish_version(name, populate, model_files=files)
    return version


def republish(repository: ModelRepository, name: str, **changes) -> int:
    """Publish a copy of the served version of `name` as a new version (metadata `changes` applied)."""
    source_version = repository.served_version(name)
    source = repository.version_dir(name, source_version)
    meta = repository.read_metadata(name, source_version)

    def populate(staging: Path) -> ModelMetadata:
        for path in source.iterdir():
            if path.is_file() and path.name != "sceneparse.json":
                shutil.copy2(path, staging / path.name)
        data = meta.to_dict() | changes
        return ModelMetadata.from_dict(data)

    version, _ = repository.publish_version(name, populate)
    return version


@pytest.fixture(scope="session")
def gateway_source_repository(request, tmp_path_factory) -> ModelRepository:
    """A read-only repository with at least one model (the export fixture's, or the stopgap)."""
    try:
        shared = request.getfixturevalue("tiny_repository")
    except pytest.FixtureLookupError:
        shared = None
    if shared is not None:
        return shared if isinstance(shared, ModelRepository) else ModelRepository(Path(getattr(shared, "root", shared)))
    repository = ModelRepository(tmp_path_factory.mktemp("gateway-source") / "repository")
    export_stopgap_model(repository)
    return repository


@pytest.fixture(scope="session")
def model_name(gateway_source_repository) -> str:
    """The model the gateway tests use (the first in the repository)."""
    return gateway_source_repository.list_models()[0]


@pytest.fixture(scope="session")
def psp_model_name(gateway_source_repository) -> str:
    """A PSPNet model of the repository (plain convolutions: every ONNX shape is inferable)."""
    names = gateway_source_repository.list_models()
    return next((n for n in names if gateway_source_repository.read_metadata(n).arch == "psp"), names[0])


def copy_repository(source: ModelRepository, destination: Path) -> ModelRepository:
    shutil.copytree(source.root, destination, ignore=shutil.ignore_patterns(".tmp-*", ".publish.lock"))
    return ModelRepository(destination)


@pytest.fixture
def writable_repository(gateway_source_repository, tmp_path) -> ModelRepository:
    """A private copy, for tests that publish, pin or break versions."""
    return copy_repository(gateway_source_repository, tmp_path / "repository")


# --- images ------------------------------------------------------------------------------------
def scene_array(height: int = 60, width: int = 80, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: blocks of distinct colours with noise, so tiny models predict several classes."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.float32)
    colors = rng.integers(0, 256, size=(4, 3))
    image[: height // 2, : width // 2] = colors[0]
    image[: height // 2, width // 2 :] = colors[1]
    image[height // 2 :, : width // 2] = colors[2]
    image[height // 2 :, width // 2 :] = colors[3]
    image += rng.normal(0, 12, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(image: Image.Image | np.ndarray, fmt: str = "PNG", **params) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def scene_png() -> bytes:
    return encode(scene_array())


def png_array(data: bytes) -> np.ndarray:
    """Decoded PNG bytes as an array (palette images stay class indices)."""
    return np.asarray(Image.open(io.BytesIO(data)))


def json_body(response) -> dict:
    return json.loads(response.content)
