"""Versions of a published model: listing, rollback (pinning), retention and Triton's version_policy."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from serving.repository import (
    CONFIG_FILE,
    LOCK_FILE,
    ModelRepository,
    RepositoryError,
    atomic_write_text,
    publish_lock,
)


@dataclass
class VersionRow:
    version: int
    created_at: str
    miou: float | None
    checkpoint: str
    served: bool
    pinned: bool


def version_rows(repository: ModelRepository, name: str) -> list[VersionRow]:
    """One row per complete version, oldest first."""
    versions = repository.list_versions(name)
    if not versions:
        raise RepositoryError(f"model {name!r} has no published version in {repository.root}")
    served, pinned = repository.served_version(name), repository.pinned_version(name)
    rows = []
    for version in versions:
        meta = repository.read_metadata(name, version)
        miou = meta.metrics.get("mIoU")
        rows.append(VersionRow(version, meta.created_at, None if miou is None else float(miou),
                               meta.checkpoint_name, version == served, version == pinned))
    return rows


def rollback(repository: ModelRepository, name: str, to: int | None = None) -> int:
    """Pin `to` (default: the newest version older than the served one) as the served version."""
    versions = repository.list_versions(name)
    served = repository.served_version(name)
    if to is None:
        older = [v for v in versions if v < served]
        if not older:
            raise RepositoryError(f"model {name!r}: no version older than the served version {served} to roll back to")
        to = older[-1]
    if to not in versions:
        raise RepositoryError(f"model {name!r} has no version {to} (versions: {versions})")
    with publish_lock(repository.model_dir(name) / LOCK_FILE):
        repository.set_pinned_version(name, to)
    return to


def set_version_policy(config_text: str, num_versions: int) -> str:
    """Rewrite (or add) `version_policy` so Triton keeps the latest `num_versions` loaded."""
    policy = f"version_policy: {{ latest: {{ num_versions: {int(num_versions)} }} }}"
    pattern = re.compile(r"version_policy\s*:?\s*\{(?:[^{}]|\{[^{}]*\})*\}")
    if pattern.search(config_text):
        return pattern.sub(policy, config_text, count=1)
    return config_text.rstrip("\n") + "\n" + policy + "\n"


def apply_retention(repository: ModelRepository, name: str, keep_last: int) -> list[int]:
    """Delete all but the newest `keep_last` versions (never the served one); returns the deleted ones.

    Also sets config.pbtxt's version_policy to keep that many versions loaded, so a rollback to a
    retained version is served by Triton without reloading. Deletion renames first (the version
    disappears at once) and removes the files after.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    directory = repository.model_dir(name)
    deleted = []
    with publish_lock(directory / LOCK_FILE):
        served = repository.served_version(name)
        versions = repository.list_versions(name)
        keep = set(versions[-keep_last:]) | {served}
        for version in versions:
            if version in keep:
                continue
            doomed = tempfile.mkdtemp(prefix=".tmp-deleted-", dir=directory)
            os.rename(directory / str(version), os.path.join(doomed, str(version)))
            shutil.rmtree(doomed, ignore_errors=True)
            deleted.append(version)
        config = directory / CONFIG_FILE
        if config.is_file():
            # Every retained version stays loadable, and at least keep_last once that many exist.
            atomic_write_text(config, set_version_policy(config.read_text(), max(keep_last, len(keep))))
    return deleted
