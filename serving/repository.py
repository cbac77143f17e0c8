"""The model repository: the contract between export (producer) and serving (consumer).

Layout (a Triton model repository, plus sceneparse's own metadata)::

    <root>/<name>/config.pbtxt              Triton model configuration (written by export)
    <root>/<name>/labels.txt                class names, one per line (Triton's label file)
    <root>/<name>/colors.txt                palette, one "R G B" per line (the original format)
    <root>/<name>/deployment.json           optional: {"pinned_version": N} (rollback / pin)
    <root>/<name>/<version>/model.onnx      and/or model.pt (TorchScript)
    <root>/<name>/<version>/sceneparse.json ModelMetadata of that version

A version directory becomes visible only complete: it is built under `<root>/<name>/.tmp-*`
(Triton ignores non-numeric directories) and renamed into place. A version that has no
`sceneparse.json` is not a version. Publishing, pinning and deleting versions of a model take
its publish lock (`<name>/.publish.lock`, an OS file lock). Reading goes through `scan()`
(serving/repository_scan.py): a bad entry is skipped and reported, never fatal to the others.
This module is torch-free: export, serving and the retraining pipeline all go through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from sceneparse.atomic import atomic_write_text, fsync_dir, fsync_tree
from serving.model_metadata import (
    COLORS_FILE,
    CONFIG_FILE,
    DEPLOYMENT_FILE,
    LABELS_FILE,
    LOCK_FILE,
    METADATA_FILE,
    SCHEMA_VERSION,
    TENSOR_CONTRACT,
    ModelMetadata,
    ModelNotFoundError,
    RepositoryError,
    validate_model_name,
)

if TYPE_CHECKING:
    from serving.repository_scan import ModelScan, RepositoryScan

# The metadata contract lives in serving/model_metadata.py; it is imported from here as before.
__all__ = [
    "COLORS_FILE",
    "CONFIG_FILE",
    "DEPLOYMENT_FILE",
    "LABELS_FILE",
    "LOCK_FILE",
    "METADATA_FILE",
    "ModelMetadata",
    "ModelNotFoundError",
    "ModelRepository",
    "RepositoryError",
    "SCHEMA_VERSION",
    "TENSOR_CONTRACT",
    "colors_text",
    "discard_lock_file",
    "labels_text",
    "publish_lock",
    "validate_model_name",
]

class ModelRepository:
    """A model repository rooted at a directory. All paths it hands out stay inside the root."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    # --- reading -------------------------------------------------------------------------
    def check_root(self, create: bool = False) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise RepositoryError(f"model repository {self.root} is a file, not a directory")
        if not self.root.exists():
            if not create:
                raise RepositoryError(f"model repository {self.root} does not exist")
            self.root.mkdir(parents=True, exist_ok=True)

    def model_dir(self, name: str) -> Path:
        path = (self.root / validate_model_name(name)).resolve()
        if path.parent != self.root:
            raise RepositoryError(f"model name {name!r} escapes the repository")
        return path

    def scan(self) -> RepositoryScan:
        """Every usable model with its usable versions, and what is wrong with each bad entry.

        Never fails because of one entry (serving/repository_scan.py); raises RepositoryError only
        when the root itself cannot be listed.
        """
        from serving.repository_scan import scan_repository

        return scan_repository(self)

    def scan_model(self, name: str) -> ModelScan:
        """One model's usable versions, the version to serve and the problems of its other entries."""
        from serving.repository_scan import scan_model

        return scan_model(self, name)

    def list_models(self) -> list[str]:
        """Names of models that have a version to serve, sorted (bad entries are skipped)."""
        if not self.root.is_dir():
            return []
        return sorted(self.scan().models)

    def list_versions(self, name: str) -> list[int]:
        """Usable versions of `name` (complete, readable, valid metadata), ascending."""
        return self.scan_model(name).versions

    def version_dir(self, name: str, version: int) -> Path:
        if int(version) < 1:
            raise RepositoryError(f"version must be >= 1, got {version}")
        return self.model_dir(name) / str(int(version))

    def pinned_version(self, name: str) -> int | None:
        path = self.model_dir(name) / DEPLOYMENT_FILE
        if not path.is_file():
            return None
        try:
            pinned = json.loads(path.read_text()).get("pinned_version")
            return None if pinned is None else int(pinned)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise RepositoryError(f"{path}: unreadable deployment file: {exc}") from exc

    def served_version(self, name: str) -> int:
        """The version the gateway should serve: the pinned one if set and usable, else the newest usable one."""
        scan = self.scan_model(name)
        if scan.served is None:
            detail = f" ({'; '.join(scan.problems)})" if scan.problems else ""
            if not scan.versions and not scan.problems:
                raise ModelNotFoundError(f"model {name!r} has no published version in {self.root}")
            raise RepositoryError(f"model {name!r} has no version to serve{detail}")
        return scan.served

    def read_metadata(self, name: str, version: int | None = None) -> ModelMetadata:
        version = self.served_version(name) if version is None else int(version)
        path = self.version_dir(name, version) / METADATA_FILE
        if not path.is_file():
            raise ModelNotFoundError(f"model {name!r} has no version {version}")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"{path}: unreadable metadata: {exc}") from exc
        return ModelMetadata.from_dict(data, source=str(path))

    def model_file(self, name: str, version: int, fmt: str = "onnx") -> Path:
        meta = self.read_metadata(name, version)
        if fmt not in meta.files:
            raise RepositoryError(f"model {name!r} version {version} has no {fmt} file")
        path = (self.version_dir(name, version) / meta.files[fmt]).resolve()
        if path.parent != self.version_dir(name, version).resolve():
            raise RepositoryError(f"model {name!r} version {version}: file name escapes its version directory")
        return path

    # --- writing -------------------------------------------------------------------------
    def set_pinned_version(self, name: str, version: int | None, lock_timeout: float = 60.0) -> None:
        """Pin `version` as the served one (None: unpin), under the model's publish lock.

        Under the lock, so that a pin is never written between a publisher's check and its rename
        (a rollback racing a publish), nor removed behind the back of one.
        """
        with self.publish_lock(name, lock_timeout):
            if version is not None and version not in self.list_versions(name):
                raise ModelNotFoundError(f"model {name!r} has no version {version}")
            self._write_pin(name, version)

    def _write_pin(self, name: str, version: int | None) -> None:
        atomic_write_text(self.model_dir(name) / DEPLOYMENT_FILE, json.dumps({"pinned_version": version}) + "\n")

    def publish_lock(self, name: str, timeout: float = 60.0) -> contextlib.AbstractContextManager[None]:
        """The publish lock of model `name` (its directory must exist)."""
        return publish_lock(self.model_dir(name) / LOCK_FILE, timeout=timeout)

    def next_version(self, name: str) -> int:
        directory = self.model_dir(name)
        used = [int(c.name) for c in directory.iterdir() if c.name.isdigit()] if directory.is_dir() else []
        return max(used, default=0) + 1

    def _check_tensor_contract(self, name: str, meta: ModelMetadata) -> None:
        versions = self.list_versions(name)
        if not versions:
            return
        try:
            newest = self.read_metadata(name, versions[-1])
        except RepositoryError:
            return  # an unreadable version is not served either: nothing to stay compatible with
        changed = [f"{key} {getattr(newest, key)!r} -> {getattr(meta, key)!r}" for key in TENSOR_CONTRACT
                   if getattr(newest, key) != getattr(meta, key)]
        if changed:
            raise RepositoryError(
                f"model {name!r}: the new version changes the tensor contract that its versions share in "
                f"{CONFIG_FILE} ({'; '.join(changed)}); publish it under another model name")

    def publish_version(
        self,
        name: str,
        populate: Callable[[Path], ModelMetadata],
        model_files: dict[str, str] | None = None,
        version: int | str = "auto",
        lock_timeout: float = 60.0,
        unpin: bool = True,
    ) -> tuple[int, Path]:
        """Build a new version in a staging directory and rename it into place atomically.

        `populate(staging_dir)` writes the model files into `staging_dir` and returns the
        metadata; `model_files` (file name -> text) are model-level files such as
        config.pbtxt, labels.txt and colors.txt, each replaced atomically once the version is
        complete in staging and just before it is renamed into place.
        Returns (version, path). Never overwrites an existing version. With `unpin` (the default)
        a rollback pin is removed in the same hold of the lock, so the new version is the served
        one (a pin written later, by a rollback after this publish, stays).

        All versions of a model share one config.pbtxt, so Triton loads every retained version
        with the newest one's tensor names, shapes and types: a version whose tensor contract
        differs from the newest published version's is refused (publish it under another name).
        """
        self.check_root(create=True)
        directory = self.model_dir(name)
        directory.mkdir(exist_ok=True)
        with self.publish_lock(name, lock_timeout):
            _remove_stale_staging(directory)
            if version == "auto":
                number = self.next_version(name)
            else:
                number = int(version)
                if number < 1:
                    raise RepositoryError(f"version must be >= 1, got {number}")
                if (directory / str(number)).exists():
                    raise RepositoryError(f"model {name!r} version {number} already exists; versions are never overwritten")
            staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
            try:
                meta = populate(staging)
                meta.name, meta.version = name, number
                meta.validate(source=f"{name} v{number}")
                self._check_tensor_contract(name, meta)
                atomic_write_text(staging / METADATA_FILE, json.dumps(meta.to_dict(), indent=2) + "\n")
                fsync_tree(staging)
                for file_name, text in (model_files or {}).items():
                    atomic_write_text(directory / file_name, text)
                os.rename(staging, directory / str(number))
                if unpin and (directory / DEPLOYMENT_FILE).exists():
                    self._write_pin(name, None)
                fsync_dir(directory)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return number, directory / str(number)


# --- helpers used by publishers ------------------------------------------------------------
def labels_text(classes: list[str]) -> str:
    return "".join(f"{c}\n" for c in classes)


def colors_text(palette: list[list[int]]) -> str:
    return "".join(f"{r} {g} {b}\n" for r, g, b in palette)


def _remove_stale_staging(directory: Path) -> None:
    # Only called under the publish lock, so no other publisher is using these.
    for child in directory.glob(".tmp-*"):
        shutil.rmtree(child, ignore_errors=True)


@contextlib.contextmanager
def publish_lock(path: Path, timeout: float = 60.0) -> Iterator[None]:
    """Hold the OS file lock (flock) on `path`; raises RepositoryError after `timeout` seconds.

    The kernel drops the lock when its holder's process ends, however it ends (SIGKILL, the OOM
    killer, a container stopped), so a killed publisher never blocks the next one, and there is no
    staleness rule to get wrong: the host name, the pid and the clock play no part (compose gives
    each run a new host name). The lock file itself stays; its content means nothing. Reentrant
    within a thread (one lock object per path and process), exclusive between threads and processes.
    Needs a file system with working flock (local, or NFS with its lock service).
    """
    lock = FileLock(str(path), is_singleton=True)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise RepositoryError(
            f"could not take the publish lock {path} within {timeout:.0f}s: another publish, rollback or "
            "retention of this model is running") from None
    try:
        yield
    finally:
        lock.release()


def discard_lock_file(path: Path) -> None:
    """Remove a publish lock file that nobody holds (for a model directory about to be removed).

    Taken first, so it is never removed under a holder. Waiters open the file by name on every
    attempt, so one that comes after the removal creates and locks a fresh file.
    """
    if not path.exists():
        return
    with contextlib.suppress(RepositoryError, OSError), publish_lock(path, timeout=0):
        path.unlink()
