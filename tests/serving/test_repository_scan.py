"""A repository no bad entry can stop: each kind of bad entry is skipped and reported on its own.

Unit level, on small fake versions (the gateway-level test with real ONNX Runtime sessions is
`test_bad_entries_never_stop_the_gateway` in test_reload.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from serving.repository import (
    DEPLOYMENT_FILE,
    METADATA_FILE,
    ModelNotFoundError,
    ModelRepository,
    RepositoryError,
)
from serving.repository_scan import MAX_METADATA_BYTES
from tests.serving.test_repository import _populate  # one tiny metadata for both files


@pytest.fixture
def repo(tmp_path) -> ModelRepository:
    """Models `good` (versions 1, 2) and `other` (version 1), all usable."""
    repository = ModelRepository(tmp_path / "repository")
    for name, count in (("good", 2), ("other", 1)):
        for _ in range(count):
            repository.publish_version(name, _populate)
    (repository.root / "README.md").write_text("not a model\n")  # plain files are not entries
    return repository


def _copy_version(repo: ModelRepository, name: str, version: int, target: Path) -> Path:
    shutil.copytree(repo.version_dir(name, version), target)
    return target


def _write_metadata(directory: Path, **changes) -> None:
    data = json.loads((directory / METADATA_FILE).read_text()) | changes
    (directory / METADATA_FILE).write_text(json.dumps(data))


# Each case breaks one entry and says which problem the scan must report for it.
def bad_model_name(repo, tmp_path):
    _copy_version(repo, "other", 1, repo.root / "my model" / "1")
    return "my model", "not a valid model name"


def model_symlink_leaving(repo, tmp_path):
    outside = tmp_path / "elsewhere"
    _copy_version(repo, "other", 1, outside / "1")
    _write_metadata(outside / "1", name="linked")
    (repo.root / "linked").symlink_to(outside)
    return "linked", "a symlink that leads outside the repository"


def dangling_model_symlink(repo, tmp_path):
    (repo.root / "gone").symlink_to(tmp_path / "nothing-here")
    return "gone", "a dangling symlink"


def version_symlink_leaving(repo, tmp_path):
    _copy_version(repo, "good", 2, tmp_path / "outside-version")
    _write_metadata(tmp_path / "outside-version", version=3)
    (repo.root / "good" / "3").symlink_to(tmp_path / "outside-version")
    return "good", "good/3: a symlink that leads outside the repository"


def metadata_symlink_leaving(repo, tmp_path):
    version = _copy_version(repo, "good", 2, repo.root / "good" / "3")
    _write_metadata(version, version=3)
    (version / METADATA_FILE).rename(tmp_path / "outside.json")
    (version / METADATA_FILE).symlink_to(tmp_path / "outside.json")
    return "good", "good/3: its sceneparse.json is a symlink that leads outside"


def half_written_without_metadata(repo, tmp_path):
    version = repo.root / "good" / "3"
    version.mkdir()
    (version / "model.onnx").write_bytes(b"half a mod")
    return "good", "good/3: incomplete, it has no sceneparse.json"


def half_written_without_model_file(repo, tmp_path):
    version = _copy_version(repo, "good", 2, repo.root / "good" / "3")
    _write_metadata(version, version=3)
    (version / "model.onnx").unlink()
    return "good", "good/3: its onnx file 'model.onnx' is missing"


def empty_model_file(repo, tmp_path):
    version = _copy_version(repo, "good", 2, repo.root / "good" / "3")
    _write_metadata(version, version=3)
    (version / "model.onnx").write_bytes(b"")
    return "good", "its onnx file 'model.onnx' is empty"


def metadata_not_json(repo, tmp_path):
    version = _copy_version(repo, "good", 2, repo.root / "good" / "3")
    (version / METADATA_FILE).write_text('{"name": "good", "vers')
    return "good", "good/3: its sceneparse.json is not valid JSON"


def metadata_not_utf8(repo, tmp_path):
    version = _copy_version(repo, "good", 2, repo.root / "good" / "3")
    (version / METADATA_FILE).write_bytes(b"\xff\xfe{\x00")
    return "good", "not valid JSON"


def metadata_not_an_object(repo, tmp_path):
    version = _copy_version(repo, "good", 2, repo.root / "good" / "3")
    (version / METADATA_FILE).write_text("[1, 2]")
    return "good", "does not hold a JSON object"


def metadata_with_wrong_types(repo, tmp_path):
    version = _copy_version(repo, "good", 2, repo.root / "good" / "3")
    _write_metadata(version, version=3, crop_h="big", std="x")
    return "good", "good/3: invalid metadata"


def metadata_missing_fields(repo, tmp_path):
    version = _copy_version(repo, "good", 2, repo.root / "good" / "3")
    data = json.loads((version / METADATA_FILE).read_text())
    del data["classes"]
    data["version"] = 3
    (version / METADATA_FILE).write_text(json.dumps(data))
    return "good", "missing required field(s): classes"


def metadata_is_a_directory(repo, tmp_path):
    version = repo.root / "good" / "3"
    (version / METADATA_FILE).mkdir(parents=True)
    return "good", "its sceneparse.json is not a file"


def metadata_too_large(repo, tmp_path):
    version = _copy_version(repo, "good", 2, repo.root / "good" / "3")
    data = json.loads((version / METADATA_FILE).read_text()) | {"version": 3, "padding": "x" * MAX_METADATA_BYTES}
    (version / METADATA_FILE).write_text(json.dumps(data))
    return "good", "larger than 4 MiB"


def metadata_of_another_model(repo, tmp_path):
    _copy_version(repo, "other", 1, repo.root / "good" / "3")  # says other v1
    return "good", "good/3: its sceneparse.json describes 'other' version 1"


def model_file_leaving_its_version(repo, tmp_path):
    version = _copy_version(repo, "good", 2, repo.root / "good" / "3")
    _write_metadata(version, version=3, files={"onnx": "../1/model.onnx"})
    return "good", "file name '../1/model.onnx' leaves the version directory"


def non_canonical_version_numbers(repo, tmp_path):
    for name in ("007", "0"):
        _copy_version(repo, "good", 2, repo.root / "good" / name)
    return "good", "good/007: not a version number"


def stray_directory(repo, tmp_path):
    (repo.root / "good" / "backup").mkdir()
    return "good", "good/backup: not a version number"


CASES = [bad_model_name, model_symlink_leaving, dangling_model_symlink, version_symlink_leaving,
         metadata_symlink_leaving, half_written_without_metadata, half_written_without_model_file,
         empty_model_file, metadata_not_json, metadata_not_utf8, metadata_not_an_object,
         metadata_with_wrong_types, metadata_missing_fields, metadata_is_a_directory, metadata_too_large,
         metadata_of_another_model, model_file_leaving_its_version, non_canonical_version_numbers, stray_directory]


@pytest.mark.parametrize("break_entry", CASES, ids=[case.__name__ for case in CASES])
def test_a_bad_entry_is_skipped_and_reported_alone(repo, tmp_path, break_entry):
    entry, expected = break_entry(repo, tmp_path)
    scan = repo.scan()
    # Every good model still serves its good version; the bad entry is not a model or a version.
    assert {name: model.served for name, model in scan.models.items()} == {"good": 2, "other": 1}
    assert scan.models["good"].versions == [1, 2] and scan.models["other"].versions == [1]
    assert list(scan.problems) == [entry], scan.problems
    assert any(expected in problem for problem in scan.problems[entry]), scan.problems
    # The messages name the entry inside the repository, never a path on the machine.
    for problem in scan.problems[entry]:
        assert str(tmp_path) not in problem and "/tmp" not in problem
    # The same answers through the repository's reading API (export, predict, retraining use it).
    assert repo.list_models() == ["good", "other"]
    assert repo.list_versions("good") == [1, 2] and repo.served_version("good") == 2


def test_unreadable_metadata_is_skipped(repo):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    version = _copy_version(repo, "good", 2, repo.root / "good" / "3")
    _write_metadata(version, version=3)
    (version / METADATA_FILE).chmod(0)
    scan = repo.scan()
    assert scan.models["good"].served == 2
    assert any("cannot be read (Permission denied)" in p for p in scan.problems["good"])


def test_an_unreadable_model_directory_is_reported_for_itself(repo):
    if os.geteuid() == 0:
        pytest.skip("root lists directories whatever their mode")
    (repo.root / "other").chmod(0)
    try:
        scan = repo.scan()
    finally:
        (repo.root / "other").chmod(0o755)
    assert list(scan.models) == ["good"] and "cannot be listed" in scan.problems["other"][0]


def test_a_pin_that_cannot_be_read_serves_nothing_new(repo):
    (repo.root / "good" / DEPLOYMENT_FILE).write_text("{not json")
    scan = repo.scan()
    assert "good" not in scan.models and scan.models["other"].served == 1
    assert "deployment.json: unreadable" in scan.problems["good"][0]
    with pytest.raises(RepositoryError, match="no version to serve"):
        repo.served_version("good")


def test_a_pin_to_a_broken_version_is_not_undone_by_serving_the_newest(repo):
    repo.set_pinned_version("good", 1)
    (repo.version_dir("good", 1) / METADATA_FILE).write_text("garbage")
    scan = repo.scan()
    assert "good" not in scan.models
    assert any("pinned version 1 is not usable" in p for p in scan.problems["good"])


def test_a_pin_to_a_removed_version_falls_back_to_the_newest(repo):
    repo.set_pinned_version("good", 1)
    shutil.rmtree(repo.version_dir("good", 1))
    scan = repo.scan()
    assert scan.models["good"].served == 2
    assert any("pinned version 1 does not exist" in p for p in scan.problems["good"])


def test_a_model_with_only_bad_versions_serves_nothing_and_says_why(repo):
    for version in (1, 2):
        (repo.version_dir("good", version) / METADATA_FILE).write_text("")
    scan = repo.scan()
    assert list(scan.models) == ["other"] and len(scan.problems["good"]) == 2
    with pytest.raises(RepositoryError, match="no version to serve.*not valid JSON"):
        repo.served_version("good")
    with pytest.raises(ModelNotFoundError):
        repo.served_version("never_published")


def test_a_missing_root_is_the_one_error_a_scan_raises(tmp_path):
    with pytest.raises(RepositoryError, match="cannot list the model repository"):
        ModelRepository(tmp_path / "nowhere").scan()
    assert ModelRepository(tmp_path / "nowhere").list_models() == []


def test_hidden_entries_and_staging_directories_are_not_judged(repo):
    (repo.root / ".git").mkdir()
    (repo.root / "good" / ".tmp-abc123").mkdir()
    (repo.root / "good" / ".tmp-abc123" / "model.onnx").write_bytes(b"half")
    assert repo.scan().problems == {}
