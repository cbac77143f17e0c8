"""Versions of a published model: listing, rollback (pinning), retention and Triton's version_policy."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from sceneparse.atomic import atomic_write_text
from serving.repository import (
    CONFIG_FILE,
    ModelRepository,
    RepositoryError,
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


@dataclass
class Rollback:
    """What `roll_back` did: the version now pinned, and Triton's version_policy if it had to widen it."""

    version: int
    widened_policy: list[int] | None = None  # the versions Triton now loads, when config.pbtxt was changed


def roll_back(repository: ModelRepository, name: str, to: int | None = None) -> Rollback:
    """Pin `to` (default: the newest version older than the served one) as the served version.

    When config.pbtxt's version_policy would not have Triton load `to` (the gateway on the Triton
    backend would then wait for it forever), the policy is widened to `specific` versions: the ones
    it loads now plus `to`, so nothing that serves now is unloaded and only one more version takes
    memory. The next publish writes its own policy again (and removes the pin). Both files change
    under the publish lock.
    """
    with repository.publish_lock(name):
        versions = repository.list_versions(name)
        served = repository.served_version(name)
        if to is None:
            older = [v for v in versions if v < served]
            if not older:
                raise RepositoryError(f"model {name!r}: no version older than the served version {served} to roll back to")
            to = older[-1]
        if to not in versions:
            raise RepositoryError(f"model {name!r} has no version {to} (versions: {versions})")
        config = repository.model_dir(name) / CONFIG_FILE
        widened = None
        if config.is_file():
            text = config.read_text()
            loaded = triton_loaded_versions(text, triton_version_dirs(repository, name))
            if to not in loaded:
                widened = sorted({*loaded, to})
                atomic_write_text(config, set_specific_versions(text, widened))
        repository.set_pinned_version(name, to)
    return Rollback(to, widened)


def rollback(repository: ModelRepository, name: str, to: int | None = None) -> int:
    """`roll_back`, returning only the version now served."""
    return roll_back(repository, name, to).version


def triton_loaded_versions(config_text: str, versions: list[int]) -> list[int]:
    """Which of `versions` (ascending) Triton loads under config.pbtxt's version_policy.

    Triton's three policies: `latest { num_versions: N }`, `all {}`, `specific { versions: [..] }`;
    without one, Triton loads the newest version only. Raises RepositoryError for a policy this
    cannot read (rather than guess what Triton does).
    """
    match = _POLICY_RE.search(config_text)
    if match is None:
        return versions[-1:]
    body = match.group("body")
    latest = re.fullmatch(r"\s*latest\s*:?\s*\{\s*num_versions\s*:\s*(\d+)\s*\}\s*", body)
    if latest:
        count = int(latest.group(1))
        return versions[-count:] if count else []
    if re.fullmatch(r"\s*all\s*:?\s*\{\s*\}\s*", body):
        return list(versions)
    specific = re.fullmatch(r"\s*specific\s*:?\s*\{(?P<list>[^{}]*)\}\s*", body)
    if specific:
        listed = set()
        for item in re.findall(r"versions\s*:\s*(\[[^\]]*\]|-?\d+)", specific.group("list")):
            listed.update(int(v) for v in re.findall(r"-?\d+", item))
        return [v for v in versions if v in listed]
    raise RepositoryError(f"{CONFIG_FILE}: cannot read its version_policy {match.group(0)!r}")


def triton_version_dirs(repository: ModelRepository, name: str) -> list[int]:
    """The version directories Triton sees (it counts broken or half-written ones too), ascending."""
    from serving.repository_scan import VERSION_RE

    directory = repository.model_dir(name)
    return sorted(int(c.name) for c in directory.iterdir() if VERSION_RE.match(c.name) and c.is_dir())


def set_specific_versions(config_text: str, versions: list[int]) -> str:
    """Rewrite (or add) `version_policy` so Triton loads exactly `versions`."""
    listed = ", ".join(str(int(v)) for v in sorted(versions))
    return _replace_policy(config_text, f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}")


def set_version_policy(config_text: str, num_versions: int) -> str:
    """Rewrite (or add) `version_policy` so Triton keeps the latest `num_versions` loaded."""
    return _replace_policy(config_text, f"version_policy: {{ latest: {{ num_versions: {int(num_versions)} }} }}")


_POLICY_RE = re.compile(r"version_policy\s*:?\s*\{(?P<body>(?:[^{}]|\{[^{}]*\})*)\}")


def _replace_policy(config_text: str, policy: str) -> str:
    if _POLICY_RE.search(config_text):
        return _POLICY_RE.sub(lambda _: policy, config_text, count=1)
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
    with repository.publish_lock(name):
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
            # Every retained version stays loaded, and at least keep_last once that many exist. Triton
            # counts the newest version directories it sees, usable or not.
            covering = len([v for v in triton_version_dirs(repository, name) if v >= min(keep)])
            atomic_write_text(config, set_version_policy(config.read_text(), max(keep_last, covering)))
    return deleted
