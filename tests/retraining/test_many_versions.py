"""Versions past 9: with versions 1..12 the newest is 12 (not "9" by string order) for the
repository, the gateway, rollback, retention and the next publish.

Version files are hard links to the tiny exported model (tests/fixtures/repository.py), so twelve
versions cost no copying.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from retraining.cli import rollback_main, versions_main
from retraining.versions import apply_retention, rollback, version_rows
from serving.main import create_app
from serving.repository import METADATA_FILE, ModelMetadata, ModelRepository
from serving.settings import Settings
from tests.serving.conftest import encode, scene_array

VERSIONS = list(range(1, 13))


def link_version(repository: ModelRepository, name: str, source: Path, meta: ModelMetadata) -> int:
    """Publish `source`'s files (hard links) as the next version of `name`; returns its number."""

    def populate(staging: Path) -> ModelMetadata:
        for path in source.iterdir():
            if path.is_file() and path.name != METADATA_FILE:
                os.link(path, staging / path.name)
        return ModelMetadata.from_dict(meta.to_dict())

    return repository.publish_version(name, populate)[0]


@pytest.fixture
def twelve(tiny_repository, tmp_path) -> tuple[ModelRepository, str]:
    """A repository holding only tiny_psp, versions 1..12, each published in turn."""
    source_repo, name = ModelRepository(tiny_repository.root), "tiny_psp"
    root = tmp_path / "repository"
    (root / name).mkdir(parents=True)
    for path in (source_repo.root / name).iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, root / name / path.name)  # config.pbtxt, labels.txt, colors.txt
    repository = ModelRepository(root)
    source = source_repo.version_dir(name, source_repo.served_version(name))
    meta = source_repo.read_metadata(name)
    published = [link_version(repository, name, source, meta) for _ in VERSIONS]
    assert published == VERSIONS  # auto numbering counts on past 9
    return repository, name


def test_the_newest_of_twelve_versions_is_12(twelve):
    repository, name = twelve
    assert repository.list_versions(name) == VERSIONS
    assert repository.served_version(name) == 12
    assert repository.read_metadata(name).version == 12
    assert repository.next_version(name) == 13
    rows = version_rows(repository, name)
    assert [r.version for r in rows] == VERSIONS and [r.version for r in rows if r.served] == [12]


def test_rollback_walks_down_past_10(twelve, capsys):
    repository, name = twelve
    assert rollback(repository, name) == 11
    assert repository.served_version(name) == 11
    assert rollback(repository, name) == 10
    assert rollback(repository, name) == 9
    assert repository.served_version(name) == 9
    assert rollback(repository, name, to=12) == 12 and repository.served_version(name) == 12
    # The CLI: versions lists 1..12 in numeric order, the pinned 12 served.
    assert rollback_main(["--name", name, "--repository", str(repository.root), "--to", "10"]) == 0
    capsys.readouterr()
    assert versions_main(["--name", name, "--repository", str(repository.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == [str(v) for v in VERSIONS]
    assert lines[10].split()[:3] == ["10", "yes", "(pinned)"]


def test_retention_keeps_the_numerically_newest(twelve):
    repository, name = twelve
    assert apply_retention(repository, name, keep_last=3) == list(range(1, 10))
    assert repository.list_versions(name) == [10, 11, 12] and repository.served_version(name) == 12
    # A new version after retention is 13, never a reused number.
    source = repository.version_dir(name, 12)
    assert link_version(repository, name, source, repository.read_metadata(name)) == 13
    assert repository.served_version(name) == 13


def test_retention_keeps_a_pinned_old_version(twelve):
    repository, name = twelve
    rollback(repository, name, to=2)
    assert apply_retention(repository, name, keep_last=2) == [1, *range(3, 11)]
    assert repository.list_versions(name) == [2, 11, 12] and repository.served_version(name) == 2


def test_the_gateway_serves_12_and_follows_a_rollback_to_11(twelve):
    repository, name = twelve
    image = encode(scene_array(40, 50))
    settings = Settings(repository=repository.root, poll_interval=0, ort_threads=1)
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/segment", content=image)
        assert answer.status_code == 200 and answer.headers["x-model-version"] == "12"
        (model,) = client.get("/v1/models").json()["models"]
        assert model["version"] == 12 and model["versions"] == VERSIONS
        rollback(repository, name)
        reload = client.post("/v1/admin/reload").json()
        assert reload["served"] == {name: 11} and reload["changed"] == {name: [12, 11]}
        assert client.post("/v1/segment", content=image).headers["x-model-version"] == "11"
