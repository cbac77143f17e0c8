"""Export stage 5, publish: the files go into the model repository as a new version.

The only stage that touches the repository, through `ModelRepository.publish_version` (staging
directory inside the model directory, renamed into place under the publish lock). On failure
the repository is left as it was: directories this call created for nothing are removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from export.errors import ExportError
from serving.repository import LOCK_FILE, ModelMetadata, ModelRepository, RepositoryError, discard_lock_file


def copy_into(source: Path, target: Path) -> None:
    """Copy one exported file into the staging directory (a separate function so tests can interrupt it)."""
    shutil.copyfile(source, target)


def publish(repo: ModelRepository, name: str, files: Mapping[str, Path], meta: ModelMetadata,
            model_files: dict[str, str], version: int | str) -> tuple[int, Path]:
    """publish_version, turning its errors into ExportError and removing directories it created for nothing."""

    def populate(staging: Path) -> ModelMetadata:
        for path in files.values():
            copy_into(path, staging / path.name)
        return meta

    model_dir = repo.root / name
    created = [p for p in (*reversed(repo.root.parents), repo.root, model_dir) if not p.exists()]
    try:
        return repo.publish_version(name, populate, model_files=model_files, version=version)
    except BaseException as exc:
        # A model directory this call created and that holds no version is removed again, with the
        # model-level files publish_version may have written into it; rmdir leaves anything else.
        if model_dir in created and model_dir.is_dir() and not any(c.name.isdigit() for c in model_dir.iterdir()):
            for file_name in model_files:
                with contextlib.suppress(OSError):
                    (model_dir / file_name).unlink()
            discard_lock_file(model_dir / LOCK_FILE)
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        if isinstance(exc, RepositoryError):
            raise ExportError(str(exc)) from None
        if isinstance(exc, OSError):
            raise ExportError(f"cannot write to the model repository {repo.root}: {exc}") from None
        raise


def check_repository(repository: ModelRepository, name: str, version: int | str) -> None:
    """Refuse early a repository path that is a file, and an explicit version that exists."""
    for parent in (repository.root, *repository.root.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"model repository {repository.root}: {parent} is a file, not a directory")
            break
    if version != "auto" and repository.version_dir(name, int(version)).exists():
        raise ExportError(
            f"model {name!r} version {version} already exists in {repository.root}; versions are never overwritten"
        )


def check_precision(repository: ModelRepository, name: str, precision: str) -> None:
    """Refuse early (before any heavy work) a precision other than the model's published one.

    Precision is part of a model's tensor contract (serving.repository.TENSOR_CONTRACT): an
    int8 model lives under a name of its own (default `<name>_int8`), beside its fp32 source,
    so that a rollback or a new version never silently changes a model's accuracy.
    """
    try:
        versions = repository.list_versions(name) if repository.root.is_dir() else []
        newest = repository.read_metadata(name, versions[-1]) if versions else None
    except RepositoryError:
        return  # publish_version judges unreadable versions
    if newest is not None and newest.precision != precision:
        raise ExportError(
            f"model {name!r} serves {newest.precision} versions; precision is part of a model's tensor contract, "
            f"so {precision} goes under a name of its own (e.g. --name {name}_{precision})")
