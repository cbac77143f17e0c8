"""Which images a prediction job reads, and under which name each one's outputs are written.

An input is a local file, a local folder (searched recursively for image suffixes), a list file
in the original format (`image_path [label_path]` per line, relative to a data root), or a
filesystem URI (`s3://bucket/prefix/`, `gs://...`, `hdfs://...`, `file:///...`: whatever
pyarrow's filesystems open, which is what Ray Data reads with; pyarrow comes with the `ray`
extra). Nothing is downloaded to disk: a worker streams each file's bytes into memory.

Every image becomes an `ImageTask` whose `name` (its path relative to the folder it was found in,
without suffix) is where its outputs go under --out. Two different images may not share a name:
the job refuses to start rather than let one overwrite the other.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
# Videos (serving/batch/video.py) are found in folders too, and are taken as videos by these suffixes.
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg"}
INPUT_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
# Compressed images of 40 MP are far smaller; this only stops a stray huge file from filling memory.
MAX_INPUT_BYTES = 512 * 1024 * 1024


class InputError(ValueError):
    """An input that cannot be listed: missing, unreachable, or clashing with another's output name."""


@dataclass(frozen=True)
class ImageTask:
    """One image of a job.

    `source`: a local path, or a path inside the filesystem of `filesystem_uri` (the URI the
    image was found under). `name`: the outputs' path relative to --out, POSIX, no suffix.
    """

    source: str
    name: str
    filesystem_uri: str | None = None

    @property
    def display(self) -> str:
        """The input as the user knows it: a local path or a full URI."""
        if self.filesystem_uri is None:
            return self.source
        scheme = self.filesystem_uri.split("://", 1)[0]
        return f"{scheme}://{self.source.lstrip('/')}" if scheme != "file" else f"file://{self.source}"


def is_video(source: str) -> bool:
    """Whether an input is taken as a video (serving/batch/video.py): by its suffix; decoding then decides."""
    return PurePosixPath(source).suffix.lower() in VIDEO_SUFFIXES


def is_uri(text: str) -> bool:
    """Whether `text` names a filesystem by scheme (`s3://...`) rather than a local path."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and len(scheme) > 1


def _stem(relative: PurePosixPath | Path) -> str:
    return PurePosixPath(relative).with_suffix("").as_posix()


def _within(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
    except ValueError:
        return False
    return True


def _local(item: str, exclude: Path | None) -> list[ImageTask]:
    path = Path(item).absolute()  # workers (Ray actors) may run in another working directory
    if path.is_dir():
        tasks = []
        for child in sorted(path.rglob("*")):
            if child.is_file() and child.suffix.lower() in INPUT_SUFFIXES and not _within(child, exclude):
                tasks.append(ImageTask(str(child), _stem(child.relative_to(path))))
        return tasks
    if path.exists():
        # A file named on the command line is taken whatever its suffix: decoding decides.
        return [ImageTask(str(path), _stem(Path(path.name)))]
    raise InputError(f"input {path} does not exist")


def _filesystem(uri: str):
    try:
        from pyarrow import fs
    except ImportError:
        raise InputError(f"input {uri}: reading URIs needs pyarrow; install the ray extra: "
                         "pip install 'sceneparse[ray]'") from None
    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for unknown schemes and bad URIs
        raise InputError(f"input {uri}: cannot open its filesystem: {exc}") from None


def _remote(uri: str) -> list[ImageTask]:
    from pyarrow import fs

    filesystem, root = _filesystem(uri)
    try:
        info = filesystem.get_file_info(root)
        if info.type == fs.FileType.Directory:
            found = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
            files = sorted(f.path for f in found if f.type == fs.FileType.File
                           and PurePosixPath(f.path).suffix.lower() in INPUT_SUFFIXES)
            base = PurePosixPath(root)
            return [ImageTask(path, _stem(PurePosixPath(path).relative_to(base)), uri) for path in files]
    except OSError as exc:
        raise InputError(f"input {uri}: cannot list it: {exc}") from None
    if info.type == fs.FileType.File:
        return [ImageTask(root, _stem(PurePosixPath(PurePosixPath(root).name)), uri)]
    raise InputError(f"input {uri} does not exist")


def read_list_file(list_path: str | os.PathLike, data_root: str | os.PathLike) -> list[ImageTask]:
    """The images of a list file in the original format (first column; the label column is ignored).

    Relative paths are joined to `data_root`, and outputs keep that relative path
    (`images/val/x.jpg` -> `<out>/images/val/x.png`); an absolute path outside the root keeps
    only its file name. Blank lines are skipped. Raises InputError naming the file and line.
    """
    list_path, root = Path(list_path), Path(data_root)
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"list file {list_path}: cannot read it: {exc}") from None
    tasks = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise InputError(f"{list_path}:{number}: expected `image_path [label_path]`, got {line.strip()!r}")
        path = (root / fields[0]).absolute()
        if not path.is_file():
            raise InputError(f"{list_path}:{number}: image {path} does not exist")
        relative = Path(fields[0])
        if relative.is_absolute():
            relative = path.resolve().relative_to(root.resolve()) if _within(path, root.resolve()) else Path(path.name)
        tasks.append(ImageTask(str(path), _stem(relative)))
    if not tasks:
        raise InputError(f"list file {list_path} lists no images")
    return tasks


def collect_tasks(inputs: Iterable[str | os.PathLike], lists: Sequence[str | os.PathLike] = (),
                  data_root: str | os.PathLike = ".", exclude: str | os.PathLike | None = None) -> list[ImageTask]:
    """Every image of `inputs` (files, folders, URIs) and `lists` (list files), in a stable order.

    `exclude`: a folder whose files are never inputs (the job's --out, when it lies inside an
    input folder). The same file given twice is taken once. Raises InputError for an input that
    does not exist and for two different images that would write the same output name.
    """
    excluded = Path(exclude).resolve() if exclude is not None else None
    tasks: list[ImageTask] = []
    for item in inputs:
        text = os.fspath(item)
        tasks.extend(_remote(text) if is_uri(text) else _local(text, excluded))
    for list_path in lists:
        tasks.extend(read_list_file(list_path, data_root))
    return _unique(tasks)


def _identity(task: ImageTask) -> tuple[str | None, str]:
    if task.filesystem_uri is None:
        return None, os.path.realpath(task.source)
    return task.filesystem_uri.split("://", 1)[0], task.source


def _unique(tasks: list[ImageTask]) -> list[ImageTask]:
    by_name: dict[str, ImageTask] = {}
    unique = []
    for task in tasks:
        other = by_name.get(task.name)
        if other is None:
            by_name[task.name] = task
            unique.append(task)
        elif _identity(other) != _identity(task):
            raise InputError(f"inputs {other.display} and {task.display} would both be written as {task.name}; "
                             "rename one, or predict them into separate --out folders")
    return unique
