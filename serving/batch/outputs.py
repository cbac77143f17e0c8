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

    color, label, overlay, confidence   `<name>.png` (serving/rendering.py, as the gateway's)
    rle                                 `<name>.rle.json`, the gateway's `output=rle` answer
    coco                                `<name>.rle.json` per image, then `results.json` (COCO-stuff
                                        results of every image) and `categories.json`
    --probabilities                     `<name>.npz` beside them: float16 (classes, H, W), compressed
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sceneparse import atomic
from serving.coco import coco_categories, coco_results, rle_document
from serving.rendering import render_png
from serving.repository import ModelMetadata
from serving.segmentation import Prediction

if TYPE_CHECKING:
    from serving.batch.image import ImageResult

PARTIAL_SUFFIX = ".partial"
FAILURES_FILE = "failures.json"
RESULTS_FILE = "results.json"
CATEGORIES_FILE = "categories.json"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """sceneparse.atomic's write, with the `.<name>.<random>.partial` temporary name that
    `remove_partials` sweeps after a killed worker."""
    atomic.atomic_write_bytes(path, data, suffix=PARTIAL_SUFFIX)


def atomic_output(path: Path) -> contextlib.AbstractContextManager[Path]:
    """For writers that need a path (a video muxer): sceneparse.atomic's `atomic_path`, with the
    `.partial` temporary name that `remove_partials` sweeps."""
    return atomic.atomic_path(path, suffix=PARTIAL_SUFFIX)


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


class ImageOutput(Protocol):
    """One file per image, at `<out>/<task name><suffix>`. `needs`: what of the pipeline's
    output besides the label it renders from ("confidence", "probabilities")."""

    suffix: str
    needs: frozenset[str]

    def render(self, prediction: Prediction, meta: ModelMetadata) -> bytes:
        """The file's bytes."""

    def is_complete(self, path: Path) -> bool:
        """Whether an existing file is a whole one (a rerun skips images whose files all are)."""

    def record(self, prediction: Prediction, meta: ModelMetadata) -> Any:
        """JSON-able data for the job outputs (sent to the driver), or None."""

    def describe(self) -> dict[str, Any]:
        """What makes this output's bytes what they are (goes into the job manifest)."""


def json_is_complete(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True


def _chosen(chosen: tuple[int, ...] | None) -> dict[str, Any]:
    return {} if chosen is None else {"classes": list(chosen)}


@dataclass(frozen=True)
class MaskPng:
    """The prediction as a PNG: "color" (palette), "label" (class ids), "overlay" (mask on the photo)
    or "confidence" (the winner's probability, 8 bits); `chosen`: the class filter."""

    kind: str
    alpha: float = 0.5
    chosen: tuple[int, ...] | None = None
    suffix: str = ".png"

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"confidence"}) if self.kind == "confidence" else frozenset()

    def render(self, prediction: Prediction, meta: ModelMetadata) -> bytes:
        return render_png(self.kind, prediction.image, prediction.label, meta, self.alpha, self.chosen,
                          prediction.confidence)

    def is_complete(self, path: Path) -> bool:
        return png_is_complete(path)

    def record(self, prediction: Prediction, meta: ModelMetadata) -> Any:
        return None

    def describe(self) -> dict[str, Any]:
        alpha = {"alpha": self.alpha} if self.kind == "overlay" else {}
        return {"kind": self.kind, **alpha, **_chosen(self.chosen)}


@dataclass(frozen=True)
class RleJson:
    """`<name>.rle.json`: the gateway's `output=rle` document (serving/coco.py). For "coco" its
    classes also go to the driver as the record from which `results.json` is made."""

    kind: str = "rle"
    chosen: tuple[int, ...] | None = None
    suffix: str = ".rle.json"
    needs: frozenset[str] = frozenset()

    def render(self, prediction: Prediction, meta: ModelMetadata) -> bytes:
        return _json_bytes(rle_document(prediction.label, meta, self.chosen))

    def is_complete(self, path: Path) -> bool:
        return json_is_complete(path)

    def record(self, prediction: Prediction, meta: ModelMetadata) -> Any:
        # Rendered twice for "coco" (file and record) rather than kept: encoding is cheap next to
        # the model, and the record must equal what a rerun reads back from the file.
        return rle_document(prediction.label, meta, self.chosen)["classes"] if self.kind == "coco" else None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **_chosen(self.chosen)}


@dataclass(frozen=True)
class ProbabilitiesNpz:
    """`<name>.npz` (--probabilities): `probabilities`, float16 (classes, H, W), zip-deflated.

    The values are those the label is the argmax of (rounded to float16): 2 bytes per pixel and
    class before compression, 150 classes x 1 megapixel = 300 MB in memory while it is written.
    """

    suffix: str = ".npz"
    needs: frozenset[str] = frozenset({"probabilities"})

    def render(self, prediction: Prediction, meta: ModelMetadata) -> bytes:
        if prediction.probabilities is None:
            raise ValueError("the probabilities output needs the pipeline's probabilities")
        return npz_bytes(probabilities=prediction.probabilities)

    def is_complete(self, path: Path) -> bool:
        try:
            with zipfile.ZipFile(path) as archive:  # reads the central directory, written last
                return "probabilities.npy" in archive.namelist()
        except (OSError, zipfile.BadZipFile):
            return False

    def record(self, prediction: Prediction, meta: ModelMetadata) -> Any:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": "probabilities"}


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """What `np.savez_compressed` writes, but byte-identical for equal arrays: every member has a
    fixed date (numpy stamps the current time), so a Ray job's files equal one process's."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def _json_bytes(document: Any) -> bytes:
    return (json.dumps(document, separators=(",", ":")) + "\n").encode()


MASK_KINDS = ("color", "label", "overlay", "confidence")
OUTPUT_KINDS = (*MASK_KINDS, "rle", "coco")


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


@dataclass
class CocoResults:
    """`results.json` (COCO-stuff results: one entry per image and class, `image_id` the image's
    1-based position in the job's inputs) and `categories.json` (the model's classes).

    Written images bring their entries as records; an image skipped as complete is read back from
    its `<name>.rle.json`, so a resumed job writes the same results as one run to the end.
    """

    meta: ModelMetadata
    image_ids: dict[str, int]
    entries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    out_dir: Path | None = None
    skipped: list[ImageResult] = field(default_factory=list)

    def add(self, result: ImageResult) -> None:
        if result.status == "written" and "coco" in result.records:
            self.entries[result.name] = self._entries(result, result.records["coco"])
        elif result.status == "skipped":
            self.skipped.append(result)

    def _entries(self, result: ImageResult, classes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        file_name = result.name + PurePosixPath(result.display).suffix
        return coco_results({"classes": classes}, self.image_ids[result.name], file_name)

    def write(self, out_dir: Path) -> Path:
        for result in self.skipped:
            with contextlib.suppress(OSError, ValueError, KeyError):
                document = json.loads((out_dir / f"{result.name}{RleJson.suffix}").read_bytes())
                self.entries[result.name] = self._entries(result, document["classes"])
        results = [entry for name in sorted(self.entries, key=self.image_ids.__getitem__)
                   for entry in self.entries[name]]
        atomic_write_bytes(out_dir / CATEGORIES_FILE, _json_bytes(coco_categories(self.meta)))
        path = out_dir / RESULTS_FILE
        atomic_write_bytes(path, _json_bytes(results))
        return path


@dataclass(frozen=True)
class OutputPlan:
    """The per-image outputs of a job; `job_outputs()` makes its per-job collectors.

    `video`: what a video input becomes (serving/batch/video.py `VideoOutput`; None when the job
    has no video); a video has that one file instead of the image outputs.
    """

    images: tuple[ImageOutput, ...]
    video: Any = None

    @classmethod
    def for_kinds(cls, kinds: Sequence[str], alpha: float = 0.5, chosen: Sequence[int] | None = None,
                  probabilities: bool = False) -> OutputPlan:
        """The plan for `--output` kinds (one per job today), `--classes` and `--probabilities`."""
        chosen = tuple(chosen) if chosen is not None else None
        outputs: list[ImageOutput] = []
        for kind in kinds:
            if kind in MASK_KINDS:
                outputs.append(MaskPng(kind, alpha, chosen))
            elif kind in ("rle", "coco"):
                outputs.append(RleJson(kind, chosen))
            else:
                raise ValueError(f"unknown output kind {kind!r}: use one of {', '.join(OUTPUT_KINDS)}")
        if probabilities:
            outputs.append(ProbabilitiesNpz())
        suffixes = [output.suffix for output in outputs]
        if len(set(suffixes)) != len(suffixes):
            raise ValueError(f"outputs {', '.join(kinds)} would write the same files")
        return cls(tuple(outputs))

    @property
    def needs(self) -> frozenset[str]:
        """What the pipeline must give besides the label ("confidence", "probabilities")."""
        return frozenset().union(*(output.needs for output in self.images))

    def outputs(self, video: bool = False) -> tuple[Any, ...]:
        """The outputs of one input: the image outputs, or for a video the video output."""
        return (self.video,) if video else self.images

    def paths(self, out_dir: Path, name: str, video: bool = False) -> list[Path]:
        return [out_dir / f"{name}{output.suffix}" for output in self.outputs(video)]

    def is_complete(self, out_dir: Path, name: str, video: bool = False) -> bool:
        """Whether every output of input `name` exists and is whole."""
        outputs = self.outputs(video)
        return all(output.is_complete(path) for output, path in zip(outputs, self.paths(out_dir, name, video), strict=True))

    def job_outputs(self, meta: ModelMetadata | None = None, names: Sequence[str] = ()) -> list[JobOutput]:
        """The per-job files: failures.json always; results.json and categories.json for "coco"
        (`meta`: the model; `names`: every input's name, in the job's order, for the image ids)."""
        outputs: list[JobOutput] = [FailuresFile()]
        if any(output.describe()["kind"] == "coco" for output in self.images):
            if meta is None:
                raise ValueError("the coco output needs the model's metadata")
            outputs.append(CocoResults(meta, {name: index for index, name in enumerate(names, start=1)}))
        return outputs

    def describe(self) -> list[dict[str, Any]]:
        return [output.describe() for output in (*self.images, *((self.video,) if self.video else ()))]


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
