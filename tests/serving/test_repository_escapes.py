"""Paths the repository hands out stay inside it, even when its files say otherwise: a model file
name in a version's metadata that leads out of the version directory, and a model directory that
is a symlink to elsewhere. (The scan skips such entries with its own checks, test_repository_scan.py;
these are the checks of `model_file` and `model_dir`, which callers reach without a scan.)
"""

from __future__ import annotations

import json
import shutil

import pytest

from serving.repository import METADATA_FILE, ModelMetadata, ModelRepository, RepositoryError


def _populate(staging):
    (staging / "model.onnx").write_bytes(b"onnx")
    return ModelMetadata(name="m", version=0, arch="psp", layers=18, dataset="synthetic", classes=["a", "b"],
                         palette=[[0, 0, 0], [255, 0, 0]], crop_h=65, crop_w=65, mean=[1.0, 2.0, 3.0],
                         std=[1.0, 1.0, 1.0])


@pytest.fixture
def repo(tmp_path) -> ModelRepository:
    repository = ModelRepository(tmp_path / "repo")
    repository.publish_version("m", _populate)
    return repository


@pytest.mark.parametrize("file_name", ["../1/model.onnx", "../../../outside.onnx", "/etc/hostname"])
def test_a_model_file_name_leading_out_of_its_version_is_refused(repo, tmp_path, file_name):
    version = repo.root / "m" / "2"
    shutil.copytree(repo.root / "m" / "1", version)
    data = json.loads((version / METADATA_FILE).read_text()) | {"version": 2, "files": {"onnx": file_name}}
    (version / METADATA_FILE).write_text(json.dumps(data))
    with pytest.raises(RepositoryError, match="escapes its version directory"):
        repo.model_file("m", 2)
    assert repo.model_file("m", 1) == (repo.root / "m" / "1" / "model.onnx").resolve()


def test_a_model_directory_that_is_a_symlink_out_of_the_repository_is_refused(repo, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(repo.root / "m", outside)
    (repo.root / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RepositoryError, match="escapes the repository"):
        repo.model_dir("linked")
    assert "linked" not in repo.list_models()
    assert repo.model_dir("m") == repo.root / "m"
