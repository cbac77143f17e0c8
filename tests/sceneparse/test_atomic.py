"""sceneparse.atomic: a file is the old one or the whole new one, durably, and failures leave no trace."""

from __future__ import annotations

import os
import stat

import pytest

from sceneparse import atomic
from sceneparse.atomic import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text


def test_write_replaces_the_file_with_the_usual_permissions(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old\n")
    atomic_write_text(target, "new: é\n")
    assert target.read_text(encoding="utf-8") == "new: é\n"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # as open() would, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_the_file_and_then_its_folder_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(kind)
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert events == ["file", "rename", "folder"]
    events.clear()
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"y")
    assert events == ["file", "rename", "folder"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "last.pth"
    target.write_bytes(b"complete old checkpoint")
    with pytest.raises(RuntimeError, match="disk full"), atomic_open(target, "wb", prefix=".tmp-", suffix="") as f:
        f.write(b"half of the new one")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"complete old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]

    with pytest.raises(OSError), atomic_path(target, suffix=".partial") as tmp:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"complete old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_the_new_content_is_invisible_until_the_block_ends(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with atomic_open(target, "w", suffix=".partial", encoding="utf-8") as handle:
        handle.write("new")
        handle.flush()
        assert target.read_text() == "old"
        (temporary,) = [p for p in tmp_path.iterdir() if p != target]
        assert temporary.name.startswith(".state.json.") and temporary.name.endswith(".partial")
    assert target.read_text() == "new"


def test_only_writing_modes(tmp_path):
    for mode in ("a", "r+", "rb"):
        with pytest.raises(ValueError, match="mode"), atomic_open(tmp_path / "x", mode):
            pass
    assert not list(tmp_path.iterdir())
