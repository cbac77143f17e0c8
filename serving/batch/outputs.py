"""What a prediction job writes: files per image (by the workers) and files per job (by the driver).

Per image, every `ImageOutput` of the job's `OutputPlan` renders one file from the image's
`Prediction` and `write_outputs` writes it atomically: into a uniquely named `.<name>.*.partial`
file in the same folder, fsync, rename. A file under its final name is therefore complete, and
two attempts at the same image (a retried task) never share a temporary file. A worker killed
mid-write leaves only a `.partial` file, which the driver removes (`remove_partials`).

Per job, every `JobOutput` sees each image's `ImageResult` on the driver (`add`) and writes its
file once at the end (`write`); `failures.json` is one. An output that aggregates over all
images (a COCO results file, say) takes what it needs from `ImageResult.records`, which the
per-image outputs fill in the worker (`ImageOutput.record`) and which travel back to the driver.

Adding an output kind is one class here and one entry in `OutputPlan.for_kinds`; both paths
(single-process and Ray) pick it up, as both call `write_outputs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from serving.rendering import render_png
from serving.repository import ModelMetadata

if TYPE_CHECKING:
    from serving.batch.image import ImageResult

PARTIAL_SUFFIX = ".partial"
FAILURES_FILE = "failures.json"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a uniquely named temporary file beside it, fsync, rename.

    Readers see the old file or the whole new one, never a part. The temporary file is removed
    when the write fails; only a killed process leaves it (`.<name>.<random>.partial`). The
    file gets the usual permissions (0666 less the umask), as a plain write would.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{PARTIAL_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_partials(out_dir: Path) -> int:
    """Delete the temporary files that killed writers left under `out_dir`; returns how many."""
    removed = 0
    if not out_dir.is_dir():
        return 0
    for path in out_dir.rglob(f".*{PARTIAL_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def png_is_complete(path: Path) -> bool:
    """Whether `path` is a whole PNG file: the signature at the start and the IEND chunk at the end."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_PNG_SIGNATURE))
            handle.seek(0, os.SEEK_END)
            if handle.tell() < len(_PNG_SIGNATURE) + len(_PNG_END):
                return False
            handle.seek(-len(_PNG_END), os.SEEK_END)
            return head == _PNG_SIGNATURE and handle.read() == _PNG_END
    except OSError:
        return False


@dataclass
class Prediction:
    """What the pipeline gave for one image: the decoded (H, W, 3) uint8 RGB image and its (H, W) class ids."""

    image: np.ndarray
    label: np.ndarray


class ImageOutput(Protocol):
    """One file per image, at `<out>/<task name><suffix>`."""

    suffix: str

    def render(self, prediction: Prediction, meta: ModelMetadata) -> bytes:
        """The file's bytes."""

    def is_complete(self, path: Path) -> bool:
        """Whether an existing file is a whole one (a rerun skips images whose files all are)."""

    def record(self, prediction: Prediction, meta: ModelMetadata) -> Any:
        """JSON-able data for the job outputs (sent to the driver), or None."""

    def describe(self) -> dict[str, Any]:
        """What makes this output's bytes what they are (goes into the job manifest)."""


@dataclass(frozen=True)
class MaskPng:
    """The label map as a PNG: "color" (palette), "label" (class ids) or "overlay" (mask on the photo)."""

    kind: str
    alpha: float = 0.5
    suffix: str = ".png"

    def render(self, prediction: Prediction, meta: ModelMetadata) -> bytes:
        return render_png(self.kind, prediction.image, prediction.label, meta, self.alpha)

    def is_complete(self, path: Path) -> bool:
        return png_is_complete(path)

    def record(self, prediction: Prediction, meta: ModelMetadata) -> Any:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "alpha": self.alpha} if self.kind == "overlay" else {"kind": self.kind}


MASK_KINDS = ("color", "label", "overlay")


class JobOutput(Protocol):
    """A file written once per job, on the driver, from every image's result."""

    def add(self, result: ImageResult) -> None:
        """Take one image's result (written, failed, or skipped because complete)."""

    def write(self, out_dir: Path) -> Path:
        """Write the file (atomically) and return its path."""


@dataclass
class FailuresFile:
    """`failures.json`: the inputs that could not be read, decoded or written, with the reason.

    Written at the end of every job, as `[]` when nothing failed, so a stale list from an
    earlier run never survives a successful rerun.
    """

    failures: list[dict[str, str]] = field(default_factory=list)

    def add(self, result: ImageResult) -> None:
        if result.status == "failed":
            self.failures.append({"input": result.display, "name": result.name, "error": result.error or ""})

    def write(self, out_dir: Path) -> Path:
        path = out_dir / FAILURES_FILE
        ordered = sorted(self.failures, key=lambda entry: entry["input"])
        atomic_write_bytes(path, (json.dumps(ordered, indent=2) + "\n").encode())
        return path


@dataclass(frozen=True)
class OutputPlan:
    """The per-image outputs of a job; `job_outputs()` makes its per-job collectors."""

    images: tuple[ImageOutput, ...]

    @classmethod
    def for_kinds(cls, kinds: tuple[str, ...] | list[str], alpha: float = 0.5) -> OutputPlan:
        """The plan for `--output` kinds (today one of MASK_KINDS per job)."""
        outputs = []
        for kind in kinds:
            if kind not in MASK_KINDS:
                raise ValueError(f"unknown output kind {kind!r}: use one of {', '.join(MASK_KINDS)}")
            outputs.append(MaskPng(kind, alpha))
        suffixes = [output.suffix for output in outputs]
        if len(set(suffixes)) != len(suffixes):
            raise ValueError(f"outputs {', '.join(kinds)} would write the same files")
        return cls(tuple(outputs))

    def paths(self, out_dir: Path, name: str) -> list[Path]:
        return [out_dir / f"{name}{output.suffix}" for output in self.images]

    def is_complete(self, out_dir: Path, name: str) -> bool:
        """Whether every output of image `name` exists and is whole."""
        return all(output.is_complete(path) for output, path in zip(self.images, self.paths(out_dir, name), strict=True))

    def job_outputs(self) -> list[JobOutput]:
        return [FailuresFile()]

    def describe(self) -> list[dict[str, Any]]:
        return [output.describe() for output in self.images]


def write_outputs(plan: OutputPlan, out_dir: Path, name: str, prediction: Prediction,
                  meta: ModelMetadata) -> dict[str, Any]:
    """Render and atomically write every per-image output of `name`; returns the records for the job outputs.

    Raises OSError when a file cannot be written (the files already written stay: each is whole).
    """
    records: dict[str, Any] = {}
    for output, path in zip(plan.images, plan.paths(out_dir, name), strict=True):
        data = output.render(prediction, meta)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        record = output.record(prediction, meta)
        if record is not None:
            records[output.describe()["kind"]] = record
    return records
