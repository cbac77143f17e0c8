"""List files in the original format: `image_path label_path` per line, relative to data_root.

The test split may list images alone (one column). Blank lines are skipped. Every problem is a
`DataListError` that names the list file, the 1-based line number and the offending path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["SPLITS", "DataListError", "ListEntry", "parse_list", "read_list"]

SPLITS = ("train", "val", "test")


class DataListError(ValueError):
    """A list file (or a file it names) is wrong; `str()` says where: list file, line, path."""

    def __init__(self, list_path: str | os.PathLike, line: int | None, problem: str, path: str | None = None):
        self.list_path = str(list_path)
        self.line = line
        self.path = path
        self.problem = problem
        where = self.list_path if line is None else f"{self.list_path}:{line}"
        super().__init__(f"{where}: {problem}" + (f": {path}" if path else ""))


@dataclass(frozen=True)
class ListEntry:
    """One sample of a list file: absolute-or-root-joined paths and where it was listed."""

    image_path: str
    label_path: str | None
    list_path: str
    line: int

    def error(self, problem: str, path: str | None = None) -> DataListError:
        """A `DataListError` pointing at this entry's line."""
        return DataListError(self.list_path, self.line, problem, path)


def parse_list(
    list_path: str | os.PathLike, data_root: str | os.PathLike, split: str, check_files: bool = True
) -> list[ListEntry]:
    """Read a list file into entries, checking its format and (optionally) that files exist.

    Args:
        list_path: the list file.
        data_root: directory the listed paths are relative to (absolute paths are kept as is).
        split: "train" or "val" need two columns; "test" accepts one (label_path None) or two.
        check_files: stat every listed file (cheap; catches typos before training starts).

    Raises:
        DataListError: missing or empty list, a malformed line, a listed file that does not exist.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    list_path = os.fspath(list_path)
    data_root = os.fspath(data_root)
    if not os.path.isfile(list_path):
        raise DataListError(list_path, None, "list file does not exist")
    with open(list_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    allowed = (1, 2) if split == "test" else (2,)
    entries = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in allowed:
            expected = "`image_path [label_path]`" if split == "test" else "`image_path label_path`"
            raise DataListError(list_path, number, f"malformed line for split {split!r}, expected {expected}",
                                line.strip())
        paths = [os.path.join(data_root, field) for field in fields]
        if check_files:
            for path in paths:
                if not os.path.isfile(path):
                    raise DataListError(list_path, number, "file does not exist", path)
        entries.append(ListEntry(paths[0], paths[1] if len(paths) == 2 else None, list_path, number))
    if not entries:
        raise DataListError(list_path, None, "list file has no samples")
    return entries


def read_list(
    list_path: str | os.PathLike, data_root: str | os.PathLike, split: str
) -> list[tuple[str, str | None]]:
    """`[(image_path, label_path or None), ...]` of a list file; see `parse_list` for the checks."""
    return [(e.image_path, e.label_path) for e in parse_list(list_path, data_root, split)]
