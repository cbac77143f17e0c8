"""Writing a file that must never be seen half-written: the one way sceneparse does it.

The bytes go to a temporary file in the target's own folder (a rename is atomic only within one
file system), are flushed and fsynced, the temporary file is renamed over the target, and the
folder is fsynced so that the rename itself survives a crash. A reader therefore sees the old
file or the whole new one, never a part, even after a power cut. When the writing fails the
temporary file is removed; only a killed process leaves one behind, named
`<prefix><name>.<random><suffix>` so that its owner can sweep it (checkpoints use `.tmp-`,
`sceneparse predict` `.partial`). The file gets the usual permissions (0666 less the umask),
as a plain `open(path, "w")` would.

Torch-free and imports nothing of sceneparse, so serving, training, export and retraining all
use it (tests/test_import_rules.py).

    atomic_write_text(path, text)          a whole text (UTF-8)
    atomic_write_bytes(path, data)         whole bytes
    with atomic_open(path, "wb") as f:     a writer that streams (torch.save, csv, savefig)
    with atomic_path(path) as tmp:         a writer that needs a path (a video muxer, os.link)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir", "fsync_tree"]


def _temporary_name(path: Path, prefix: str, suffix: str) -> Path:
    # Random, so that two writers of the same file (a retried task, two processes) never share one.
    return path.with_name(f"{prefix}{path.name}.{secrets.token_hex(6)}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, prefix: str = ".", suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path`; when the block ends normally, the file written there is
    fsynced and renamed to `path` (and the folder fsynced). It is removed when the block raises."""
    path = Path(path)
    tmp = _temporary_name(path, prefix, suffix)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, prefix: str = ".", suffix: str = ".tmp",
                encoding: str | None = None, newline: str | None = None) -> Iterator[IO[Any]]:
    """An open file to write `path`'s new content into (mode "w" or "wb"); it replaces `path`
    when the block ends normally, and nothing changes when the block raises."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    tmp = _temporary_name(path, prefix, suffix)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 less the umask, as open() gives
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None, newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, prefix: str = ".", suffix: str = ".tmp") -> None:
    """Replace `path` with `data`, atomically and durably (see the module docstring)."""
    with atomic_open(path, "wb", prefix=prefix, suffix=suffix) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", prefix: str = ".",
                      suffix: str = ".tmp") -> None:
    """Replace `path` with `text`, atomically and durably (see the module docstring)."""
    with atomic_open(path, "w", prefix=prefix, suffix=suffix, encoding=encoding) as handle:
        handle.write(text)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a folder, so that the renames and new names in it survive a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not every file system lets a folder be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:  # and some refuse fsync on a folder (EINVAL): nothing more can be done there
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """fsync every file under `path` and the folder itself (a staging folder before its rename)."""
    for child in Path(path).rglob("*"):
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(path)
