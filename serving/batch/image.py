"""The per-image work of `sceneparse predict`: read, decode, segment, write every output atomically.

Single-process and Ray jobs both run `ImagePredictor` on each `ImageTask`, which is what makes
their files byte-identical. It never raises for a bad input: an image that cannot be read,
decoded or written comes back as a failed `ImageResult` and the job goes on. Errors of the
model or the backend (a broken graph, Triton gone) do raise: they would fail every image alike.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.batch.inputs import MAX_INPUT_BYTES, ImageTask, is_video
from serving.batch.outputs import OutputPlan, write_outputs
from serving.imaging import ImageError, decode_image
from serving.pipeline import PipelineSpec, Runner
from serving.repository import ModelMetadata
from serving.segmentation import SegmentOptions, segment

WRITTEN, FAILED, SKIPPED = "written", "failed", "skipped"


def worker_id() -> str:
    """`host:pid` of this process: a worker's name in the job report (a replaced worker gets a new one)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ImageResult:
    """What became of one image. `status`: written, failed (with `error`) or skipped (already complete).

    `seconds`: time spent on it by `worker`; `records`: per-image data for the job outputs.
    """

    name: str
    display: str
    status: str
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""
    records: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """A flat row of strings and numbers (what travels through Ray Data's blocks)."""
        return {"name": self.name, "display": self.display, "status": self.status, "error": self.error or "",
                "seconds": self.seconds, "worker": self.worker, "records": json.dumps(self.records)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ImageResult:
        return cls(name=str(row["name"]), display=str(row["display"]), status=str(row["status"]),
                   error=str(row["error"]) or None, seconds=float(row["seconds"]), worker=str(row["worker"]),
                   records=json.loads(row["records"]))


_filesystems: dict[str, Any] = {}


def read_source(task: ImageTask, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of the task's file (local, or through the pyarrow filesystem of its URI).

    Raises OSError when it cannot be read or holds more than `max_bytes`.
    """
    if task.filesystem_uri is None:
        with open(task.source, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise OSError(f"the file holds {size} bytes; the limit is {max_bytes}")
            return handle.read()
    filesystem = _filesystems.get(task.filesystem_uri)
    if filesystem is None:
        from pyarrow import fs

        filesystem, _ = fs.FileSystem.from_uri(task.filesystem_uri)
        _filesystems[task.filesystem_uri] = filesystem
    try:
        with filesystem.open_input_file(task.source) as handle:
            size = handle.size()
            if size > max_bytes:
                raise OSError(f"the file holds {size} bytes; the limit is {max_bytes}")
            return handle.read()
    except OSError:
        raise
    except Exception as exc:  # pyarrow's ArrowInvalid and friends for what is not a readable file
        raise OSError(str(exc)) from exc


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on one input: pixels (checked from the header before decoding) and file bytes."""

    max_pixels: int = 40_000_000
    max_bytes: int = MAX_INPUT_BYTES


class ImagePredictor:
    """Runs one model version over tasks and writes their outputs under `out_dir`.

    Holds what every image shares (runner, metadata, pipeline spec, options, output plan), so a
    worker builds it once. Call it with an `ImageTask`; it returns an `ImageResult`.
    """

    def __init__(self, runner: Runner, meta: ModelMetadata, options: SegmentOptions, plan: OutputPlan,
                 out_dir: str | os.PathLike[str], limits: ImageLimits = ImageLimits(), progress: bool = False):
        self.runner = runner
        self.meta = meta
        self.spec = PipelineSpec.from_metadata(meta)
        self.options = options
        self.plan = plan
        self.out_dir = Path(out_dir)
        self.limits = limits
        self.progress = progress  # a bar over each video's frames
        self.worker = worker_id()

    def __call__(self, task: ImageTask) -> ImageResult:
        start = time.perf_counter()

        def result(status: str, error: str | None = None, records: dict[str, Any] | None = None) -> ImageResult:
            return ImageResult(task.name, task.display, status, error, time.perf_counter() - start, self.worker,
                               records or {})

        if is_video(task.source):
            return self._video(task, result)
        try:
            image = decode_image(read_source(task, self.limits.max_bytes), self.limits.max_pixels)
        except OSError as exc:
            return result(FAILED, f"cannot read it: {exc.strerror or exc}")
        except ImageError as exc:
            return result(FAILED, str(exc))
        needs = self.plan.needs
        prediction = segment(image, self.runner, self.meta, self.options, spec=self.spec,
                             confidence="confidence" in needs, probabilities="probabilities" in needs)
        try:
            records = write_outputs(self.plan, self.out_dir, task.name, prediction, self.meta)
        except OSError as exc:
            return result(FAILED, f"cannot write its output under {self.out_dir}: {exc}")
        return result(WRITTEN, records=records)

    def _video(self, task: ImageTask, result) -> ImageResult:
        from serving.batch.video import VideoError, predict_video

        if self.plan.video is None:  # the CLI sets it whenever an input is a video
            return result(FAILED, "a video, but this job has no video output")
        destination = self.plan.paths(self.out_dir, task.name, video=True)[0]
        try:
            source = task.source if task.filesystem_uri is None else read_source(task, self.limits.max_bytes)
            destination.parent.mkdir(parents=True, exist_ok=True)
            counts = predict_video(
                source, self.plan.video, destination,
                lambda frame: segment(frame, self.runner, self.meta, self.options, spec=self.spec),
                self.meta.palette, self.limits.max_pixels, self.progress, task.name)
        except VideoError as exc:
            return result(FAILED, str(exc))
        except OSError as exc:
            return result(FAILED, f"cannot read it or write {destination}: {exc}")
        return result(WRITTEN, records={"video": counts})
