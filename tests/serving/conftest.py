"""Fixtures of the gateway tests: the export fixture's tiny models, writable copies, test images.

`gateway_source_repository` is `tiny_repository` (tests/fixtures/repository.py: tiny_psp and
tiny_psa exported from checkpoints by the project's own export); tests that publish, pin or
break versions work on a private copy (`writable_repository`).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.repository import ModelMetadata, ModelRepository


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
def gateway_source_repository(tiny_repository) -> ModelRepository:
    """The export fixture's repository (tiny_psp and tiny_psa, version 1). Read-only: copy to publish."""
    return ModelRepository(tiny_repository.root)


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
