"""Version numbering and atomic publishing: a failed or killed export leaves no visible version."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import export.publishing
from export import ExportError, ExportOptions, export_checkpoint
from serving.repository import ModelRepository

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK = ExportOptions(max_batch_size=1, simplify=False)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root with its sha256 (directories as 'dir')."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def test_versions_count_up_and_are_never_overwritten(psp_source, tmp_path):
    repo = tmp_path / "repo"
    first = export_checkpoint(psp_source.config, psp_source.checkpoint, repo, name="m", options=QUICK)
    explicit = export_checkpoint(psp_source.config, psp_source.checkpoint, repo,
                                 name="m", version=5, options=QUICK)
    after = export_checkpoint(psp_source.config, psp_source.checkpoint, repo,
                              name="m", version="auto", options=QUICK)
    assert (first.version, explicit.version, after.version) == (1, 5, 6)
    assert ModelRepository(repo).list_versions("m") == [1, 5, 6]
    assert ModelRepository(repo).read_metadata("m", 5).version == 5

    before = snapshot(repo)
    with pytest.raises(ExportError, match="version 5 already exists"):
        export_checkpoint(psp_source.config, psp_source.checkpoint, repo, name="m", version=5, options=QUICK)
    for bad in (0, -3, "latest"):
        with pytest.raises(ExportError, match="version"):
            export_checkpoint(psp_source.config, psp_source.checkpoint, repo,
                              name="m", version=bad, options=QUICK)
    assert snapshot(repo) == before


def test_failure_while_populating_leaves_no_trace(psp_source, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    export_checkpoint(psp_source.config, psp_source.checkpoint, repo, name="m", options=QUICK)
    before = snapshot(repo)

    def copy_then_fail(source, target):
        target.write_bytes(source.read_bytes()[:1000])  # a half-written model file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.publishing, "copy_into", copy_then_fail)
    with pytest.raises(ExportError, match="No space left"):
        export_checkpoint(psp_source.config, psp_source.checkpoint, repo, name="m", options=QUICK)
    assert snapshot(repo) == before  # no version 2, no staging directory, no lock, same config.pbtxt
    # A brand-new repository is not even created.
    with pytest.raises(ExportError):
        export_checkpoint(psp_source.config, psp_source.checkpoint, tmp_path / "fresh" / "repo",
                          name="m", options=QUICK)
    assert not (tmp_path / "fresh").exists()


KILLED_EXPORT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import export.publishing as publishing
    from export import ExportOptions, export_checkpoint

    config, checkpoint, repository, marker = json.loads(sys.argv[1])
    real_copy = publishing.copy_into

    def copy_and_hang(source, target):
        real_copy(source, target)
        Path(marker).write_text("copying")  # the parent kills us now, mid-publish
        time.sleep(120)

    publishing.copy_into = copy_and_hang
    export_checkpoint(config, checkpoint, repository,
                      ExportOptions(max_batch_size=1, simplify=False), name="m")
""")


def test_sigkill_during_export_leaves_no_visible_version(psp_source, tmp_path):
    repo = tmp_path / "repo"
    export_checkpoint(psp_source.config, psp_source.checkpoint, repo, name="m", options=QUICK)
    version_one = snapshot(repo / "m" / "1")
    config_before = (repo / "m" / "config.pbtxt").read_text()
    marker = tmp_path / "copying"
    args = json.dumps([psp_source.config, str(psp_source.checkpoint), str(repo), str(marker)])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, args], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the export never reached publishing"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL

    repository = ModelRepository(repo)
    assert repository.list_versions("m") == [1]  # the killed version 2 is not visible
    assert not (repo / "m" / "2").exists()
    assert snapshot(repo / "m" / "1") == version_one
    assert (repo / "m" / "config.pbtxt").read_text() == config_before
    leftovers = [p.name for p in (repo / "m").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers  # the staging directory the process died in (Triton ignores it)

    # The kernel dropped the dead process's lock: the next export takes it, sweeps the staging
    # directory and carries on. (The lock file stays: waiters must share one inode.)
    started = time.monotonic()
    result = export_checkpoint(psp_source.config, psp_source.checkpoint, repo, name="m", options=QUICK)
    assert result.version == 2 and repository.list_versions("m") == [1, 2]
    assert not [p for p in (repo / "m").iterdir() if p.name.startswith(".tmp-")]
    assert time.monotonic() - started < 60
