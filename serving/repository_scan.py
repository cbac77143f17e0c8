"""Reading a model repository that may hold bad entries: each is skipped and reported on its own.

A repository is written by tools and by hand, and is sometimes wrong: a directory copied by hand
that is still half-written, a name that Triton or a URL cannot carry, a symlink into another file
system, metadata that does not parse or cannot be read. None of these may stop the other models
from loading, nor the gateway's refresh loop. `scan_repository` returns every model that has a
version to serve, with its usable versions, and, per directory entry, what is wrong with it.

Problems name entries by their place in the repository (`tiny_psp/3`), never by an absolute path
or a symlink's target: they go to the log and to the admin status route.

Rules:
- entries whose name starts with a dot (`.tmp-*` staging, `.publish.lock`, `.git`) and plain
  files (README, config.pbtxt, labels.txt) are not entries to judge: ignored without a word;
- a model directory needs a valid name (`validate_model_name`) and must stay in the repository
  once symlinks are resolved; a version directory is a canonical number (1, 2, ..., as Triton
  reads them), stays in the repository, and holds a readable `sceneparse.json` (at most 4 MiB)
  that validates, names this model and version, and lists model files that exist inside it;
- the served version is the pinned one if it is usable, else the newest usable one. A pin that
  cannot be read, or names a version that is there but unusable, serves nothing new: the model is
  reported and whatever the gateway has loaded keeps serving. A pin to a version that is gone
  falls back to the newest (reported).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from serving.model_metadata import (
    DEPLOYMENT_FILE,
    METADATA_FILE,
    ModelMetadata,
    RepositoryError,
    validate_model_name,
)

if TYPE_CHECKING:
    from serving.repository import ModelRepository

# Triton reads version directories as positive 64-bit integers; "007" or "٣" would be read
# differently (or not at all) by Triton and by int(), so only canonical numbers are versions.
VERSION_RE = re.compile(r"^[1-9][0-9]{0,17}$")
MAX_METADATA_BYTES = 4 * 1024 * 1024  # a real sceneparse.json is a few KiB (150 per-class metrics included)


@dataclass
class ModelScan:
    """One model directory: its usable versions (with metadata), the version to serve, its problems."""

    name: str
    metadata: dict[int, ModelMetadata] = field(default_factory=dict)
    served: int | None = None
    pinned: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def versions(self) -> list[int]:
        return sorted(self.metadata)


@dataclass
class RepositoryScan:
    """`models`: every model with a version to serve; `problems`: root entry name -> what is wrong.

    A model may be in both (it serves a good version and has a bad one). An entry only in
    `problems` serves nothing new; what the gateway has loaded for it keeps serving.
    """

    models: dict[str, ModelScan] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)


def scan_repository(repository: ModelRepository) -> RepositoryScan:
    """Scan every entry of the repository root; raises RepositoryError only if the root cannot be listed."""
    root = repository.root
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except OSError as exc:
        raise RepositoryError(f"cannot list the model repository {root}: {_reason(exc)}") from None
    result = RepositoryScan()
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        problem = _model_entry_problem(root, Path(entry.path))
        if problem == "":
            continue  # a plain file: not an entry to judge
        if problem is not None:
            result.problems[name] = [f"{name}: {problem}: skipped"]
            continue
        model = scan_model(repository, name)
        if model.problems:
            result.problems[name] = model.problems
        if model.served is not None:
            result.models[name] = model
    return result


def scan_model(repository: ModelRepository, name: str) -> ModelScan:
    """Scan one model directory; never raises for what is inside it (its problems are listed)."""
    scan = ModelScan(name)
    try:
        directory = repository.model_dir(name)
    except RepositoryError as exc:
        scan.problems.append(f"{name}: {exc}")
        return scan
    try:
        children = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except FileNotFoundError:
        return scan  # no such model: nothing wrong, nothing to serve
    except OSError as exc:
        scan.problems.append(f"{name}: cannot be listed ({_reason(exc)}): skipped")
        return scan
    for child in children:
        where = f"{name}/{child.name}"
        if child.name.startswith("."):
            continue
        if child.is_symlink() and not os.path.exists(child.path):
            scan.problems.append(f"{where}: a dangling symlink: skipped")
            continue
        if not _is_dir(child):
            continue
        if not VERSION_RE.match(child.name):
            scan.problems.append(f"{where}: not a version number (versions are 1, 2, ... without leading zeros): "
                                 "ignored")
            continue
        version = int(child.name)
        meta, problem = read_version(repository.root, directory, name, version)
        if problem is not None:
            scan.problems.append(f"{where}: {problem}: skipped")
        else:
            scan.metadata[version] = meta
    _choose_served(scan, directory)
    return scan


def read_version(root: Path, directory: Path, name: str, version: int) -> tuple[ModelMetadata | None, str | None]:
    """(metadata, None) for a usable version directory, else (None, what is wrong with it)."""
    version_dir = directory / str(version)
    if not _inside(version_dir, root):
        return None, "a symlink that leads outside the repository"
    metadata_path = version_dir / METADATA_FILE
    if not metadata_path.exists() and not metadata_path.is_symlink():
        return None, f"incomplete, it has no {METADATA_FILE} (a half-written or hand-copied version)"
    if not _inside(metadata_path, root):
        return None, f"its {METADATA_FILE} is a symlink that leads outside the repository"
    try:
        if not metadata_path.is_file():
            return None, f"its {METADATA_FILE} is not a file"
        if metadata_path.stat().st_size > MAX_METADATA_BYTES:
            return None, f"its {METADATA_FILE} is larger than {MAX_METADATA_BYTES // (1024 * 1024)} MiB"
        data = json.loads(metadata_path.read_bytes())
    except OSError as exc:
        return None, f"its {METADATA_FILE} cannot be read ({_reason(exc)})"
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, f"its {METADATA_FILE} is not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"its {METADATA_FILE} does not hold a JSON object"
    try:
        meta = ModelMetadata.from_dict(data, source=METADATA_FILE)
    except (RepositoryError, TypeError, ValueError) as exc:  # wrong types fail in validate()
        return None, f"invalid metadata: {exc}"
    if meta.name != name or meta.version != version:
        return None, f"its {METADATA_FILE} describes {meta.name!r} version {meta.version}"
    return meta, _model_files_problem(meta, version_dir)


def _model_files_problem(meta: ModelMetadata, version_dir: Path) -> str | None:
    if not isinstance(meta.files, dict) or not all(isinstance(f, str) for f in meta.files.values()):
        return f"invalid metadata: files must map formats to file names, got {meta.files!r}"
    for fmt, file_name in meta.files.items():
        path = version_dir / file_name
        if path.resolve().parent != version_dir.resolve():
            return f"its {fmt} file name {file_name!r} leaves the version directory"
        try:
            if not path.is_file():
                return f"its {fmt} file {file_name!r} is missing (a half-written version)"
            if path.stat().st_size == 0:
                return f"its {fmt} file {file_name!r} is empty (a half-written version)"
        except OSError as exc:
            return f"its {fmt} file {file_name!r} cannot be read ({_reason(exc)})"
    return None


def _choose_served(scan: ModelScan, directory: Path) -> None:
    try:
        scan.pinned = _read_pin(directory / DEPLOYMENT_FILE)
    except RepositoryError as exc:
        scan.problems.append(f"{scan.name}/{DEPLOYMENT_FILE}: {exc}; nothing new is served until it is fixed")
        return
    newest = max(scan.metadata, default=None)
    if scan.pinned is None or scan.pinned in scan.metadata:
        scan.served = newest if scan.pinned is None else scan.pinned
    elif (directory / str(scan.pinned)).exists():
        # Falling back to the newest would undo a rollback because the rolled-back-to version broke.
        scan.problems.append(f"{scan.name}: the pinned version {scan.pinned} is not usable; nothing new is "
                             "served until it is fixed or unpinned")
    else:
        scan.served = newest
        scan.problems.append(f"{scan.name}: the pinned version {scan.pinned} does not exist; serving the newest "
                             f"({newest})")


def _read_pin(path: Path) -> int | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes()[:65536])
        pinned = data.get("pinned_version") if isinstance(data, dict) else data["pinned_version"]
        if pinned is None:
            return None
        if isinstance(pinned, bool) or not isinstance(pinned, int) or pinned < 1:
            raise ValueError(f"pinned_version must be a version number or null, got {pinned!r}")
        return pinned
    except OSError as exc:
        raise RepositoryError(f"cannot be read ({_reason(exc)})") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise RepositoryError(f"unreadable ({exc})") from None


def _model_entry_problem(root: Path, path: Path) -> str | None:
    """None: a model directory to scan; "": not an entry to judge (a plain file); else the problem."""
    if path.is_symlink():
        if not path.exists():
            return "a dangling symlink"
        if not _inside(path, root):
            return "a symlink that leads outside the repository"
        if path.resolve().parent != root:
            return "a symlink to something other than a model directory of this repository"
    if not path.is_dir():
        return ""
    try:
        validate_model_name(path.name)
    except RepositoryError:
        return "not a valid model name (letters, digits, '_', '.', '-', at most 128, no leading dot, no '..')"
    return None


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, all symlinks resolved, is `root` or lies below it."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks: a linked version is judged (and refused if it leaves)
    except OSError:
        return False


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
