"""A prediction job: its options, its out folder, the run (single-process or Ray), its report.

`run_job` is the same for both paths:

1. prepare the out folder: take its lock (one job per folder at a time), check the manifest
   (`.sceneparse-predict.json`: model version, outputs, pipeline options), remove `.partial`
   files that a killed run left;
2. resume: an image whose outputs all exist and are whole is skipped (`--overwrite` redoes all;
   without a manifest from the same job, nothing in the folder is trusted and nothing is skipped);
3. hand the other images to an executor (`run_local` here, `serving.batch.ray_job.RayExecutor`),
   which calls back with each `ImageResult` as it comes (progress bar, report, job outputs);
4. finish: remove `.partial` files again (a killed worker's), write the job outputs
   (`failures.json`, ...), and return the `JobReport` (its `table()` is the summary).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from serving.backends.base import Backend, ModelRunner
from serving.batch.image import FAILED, SKIPPED, WRITTEN, ImageLimits, ImagePredictor, ImageResult
from serving.batch.inputs import ImageTask, is_video
from serving.batch.outputs import OutputPlan, atomic_write_bytes, remove_partials
from serving.repository import ModelMetadata, ModelRepository
from serving.segmentation import SegmentOptions

MANIFEST_FILE = ".sceneparse-predict.json"
LOCK_FILE = ".sceneparse-predict.lock"

ResultCallback = Callable[[ImageResult], None]


class JobError(RuntimeError):
    """The job cannot start or cannot go on: its out folder is taken or holds another job's outputs."""


@dataclass(frozen=True)
class ModelSpec:
    """One model version and the engine that runs it. Picklable: every Ray actor opens its own.

    `device`: onnxruntime's auto, cpu or cuda; `threads`: its intra-op threads (0: this
    process's cores); `triton_url`: for backend "triton".
    """

    repository: str
    name: str
    version: int
    backend: str = "onnxruntime"
    device: str = "auto"
    threads: int = 0
    triton_url: str | None = None

    def metadata(self) -> ModelMetadata:
        return ModelRepository(self.repository).read_metadata(self.name, self.version)

    def identity(self) -> dict[str, Any]:
        """What names the model in the job manifest."""
        return {"model": self.name, "version": self.version}

    @property
    def title(self) -> str:
        return f"{self.name} v{self.version}"

    def open(self) -> tuple[ModelMetadata, ModelRunner, Backend]:
        """Load the version: (its metadata, a runner, the backend to close after the runner)."""
        from serving.backends.factory import create_backend
        from serving.settings import Settings

        settings: dict[str, Any] = {"backend": self.backend, "repository": self.repository,
                                    "ort_device": self.device, "ort_threads": self.threads}
        if self.triton_url:
            settings["triton_url"] = self.triton_url
        backend = create_backend(Settings(**settings))
        repository = ModelRepository(self.repository)
        meta = repository.read_metadata(self.name, self.version)
        try:
            return meta, backend.open(repository, meta), backend
        except BaseException:
            backend.close()
            raise


@dataclass(frozen=True)
class CheckpointSpec:
    """A checkpoint and its config, run in eager PyTorch (`predict --config --checkpoint`; the
    `train` extra). Picklable like ModelSpec; torch is imported only by `open()`
    (training/checkpoint_model.py). `sha256` ties an out folder's files to the weights."""

    config: str
    checkpoint: str
    sha256: str
    device: str = "auto"
    threads: int = 0

    @property
    def title(self) -> str:
        return Path(self.checkpoint).name

    def identity(self) -> dict[str, Any]:
        return {"config": self.config, "checkpoint": self.checkpoint, "checkpoint_sha256": self.sha256}

    def metadata(self) -> ModelMetadata:
        from training.checkpoint_model import checkpoint_metadata, read_config

        return checkpoint_metadata(read_config(self.config), self.checkpoint)

    def open(self) -> tuple[ModelMetadata, Any, None]:
        from training.checkpoint_model import open_checkpoint

        meta, runner = open_checkpoint(self.config, self.checkpoint, self.device, self.threads)
        return meta, runner, None


@dataclass(frozen=True)
class PredictJob:
    """Everything that decides a job's files: model, options, outputs, where they go."""

    model: ModelSpec | CheckpointSpec
    out_dir: Path
    plan: OutputPlan
    options: SegmentOptions
    limits: ImageLimits = ImageLimits()
    overwrite: bool = False
    progress: bool = False  # a bar over each video's frames (the driver's own bar counts inputs)

    def manifest(self) -> dict[str, Any]:
        """What the out folder's files were made with; a rerun resumes only when this is equal."""
        return {
            **self.model.identity(), "outputs": self.plan.describe(),
            "scales": list(self.options.scales), "flip": self.options.flip,
            "stride_rate": self.options.stride_rate, "max_side": self.options.max_side,
        }

    @contextlib.contextmanager
    def predictor(self) -> Iterator[ImagePredictor]:
        """An `ImagePredictor` on a freshly opened runner, closed on exit."""
        meta, runner, backend = self.model.open()
        try:
            yield ImagePredictor(runner, meta, self.options, self.plan, self.out_dir, self.limits, self.progress)
        finally:
            if hasattr(runner, "close"):  # a TorchRunner holds nothing to release
                runner.close()
            if backend is not None:
                backend.close()


class Executor(Protocol):
    """Runs `tasks` of `job`, calling `on_result` on this thread for each image as it is done."""

    def __call__(self, job: PredictJob, tasks: list[ImageTask], on_result: ResultCallback) -> None: ...


def run_local(job: PredictJob, tasks: list[ImageTask], on_result: ResultCallback) -> None:
    """The single-process executor: one runner, the images one after another."""
    with job.predictor() as predict:
        for task in tasks:
            on_result(predict(task))


# --- the report ----------------------------------------------------------------------------------
@dataclass
class WorkerStats:
    images: int = 0
    failures: int = 0
    seconds: float = 0.0


@dataclass
class JobReport:
    """Counts of a finished (or interrupted) job and each worker's share."""

    total: int
    out_dir: Path
    written: int = 0
    failed: int = 0
    skipped: int = 0
    wall_seconds: float = 0.0
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def add(self, result: ImageResult) -> None:
        if result.status == SKIPPED:
            self.skipped += 1
            return
        stats = self.workers.setdefault(result.worker, WorkerStats())
        stats.images += 1
        stats.seconds += result.seconds
        if result.status == FAILED:
            self.failed += 1
            stats.failures += 1
            self.failures.append((result.display, result.error or ""))
        elif result.status == WRITTEN:
            self.written += 1

    @property
    def processed(self) -> int:
        return self.written + self.failed

    @property
    def complete(self) -> bool:
        return self.processed + self.skipped == self.total

    def summary(self) -> str:
        """One line: how many images have their outputs now, out of how many."""
        line = f"{self.written + self.skipped} of {self.total} images written to {self.out_dir}"
        notes = []
        if self.skipped:
            notes.append(f"{self.skipped} already complete, skipped")
        if self.failed:
            notes.append(f"{self.failed} failed, listed in failures.json")
        if not self.complete:
            notes.append(f"{self.total - self.processed - self.skipped} not done")
        return line + (f" ({'; '.join(notes)})" if notes else "")

    def table(self) -> str:
        """Images, failures, busy seconds and images/s of each worker, then of the whole job (wall time)."""
        rows = [("worker", "images", "failed", "seconds", "images/s")]
        for name in sorted(self.workers):
            stats = self.workers[name]
            rate = stats.images / stats.seconds if stats.seconds > 0 else 0.0
            rows.append((name, str(stats.images), str(stats.failures), f"{stats.seconds:.2f}", f"{rate:.2f}"))
        rate = self.processed / self.wall_seconds if self.wall_seconds > 0 else 0.0
        rows.append(("job (wall time)", str(self.processed), str(self.failed), f"{self.wall_seconds:.2f}", f"{rate:.2f}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        return "\n".join(lines)


# --- the out folder --------------------------------------------------------------------------
@contextlib.contextmanager
def out_folder(job: PredictJob) -> Iterator[bool]:
    """Lock the out folder, check and write the manifest, clear stale `.partial` files.

    Yields whether its existing files may be trusted for resuming. Raises JobError when another
    job holds the folder, or when it holds another job's outputs (unless `job.overwrite`).
    """
    from filelock import FileLock, Timeout

    out = job.out_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JobError(f"cannot create the out folder {out}: {exc}") from None
    lock = FileLock(str(out / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise JobError(f"another sceneparse predict job is writing to {out}") from None
    try:
        manifest_path = out / MANIFEST_FILE
        wanted = job.manifest()
        trusted = False
        if manifest_path.is_file() and not job.overwrite:
            try:
                found = json.loads(manifest_path.read_text())
            except (OSError, ValueError):
                found = None
            if found != wanted:
                raise JobError(
                    f"{out} holds the outputs of another job ({_describe(found)}; this one: {_describe(wanted)}); "
                    "pass --overwrite to replace them, or choose another --out")
            trusted = True
        atomic_write_bytes(manifest_path, (json.dumps(wanted, indent=2) + "\n").encode())
        remove_partials(out)
        yield trusted
    finally:
        remove_partials(out)
        lock.release()


def _describe(manifest: dict[str, Any] | None) -> str:
    if not isinstance(manifest, dict):
        return "an unreadable manifest"
    kinds = ",".join(str(o.get("kind")) for o in manifest.get("outputs", []) if isinstance(o, dict))
    model = (f"{manifest.get('model')} v{manifest.get('version')}" if "model" in manifest
             else f"checkpoint {manifest.get('checkpoint')} (sha256 {str(manifest.get('checkpoint_sha256'))[:12]})")
    return (f"{model}, output {kinds}, scales {manifest.get('scales')}, "
            f"flip {manifest.get('flip')}, max_side {manifest.get('max_side')}")


# --- the run -------------------------------------------------------------------------------------
def run_job(job: PredictJob, tasks: list[ImageTask], executor: Executor = run_local, progress: bool = True,
            on_result: ResultCallback | None = None) -> JobReport:
    """Run `job` over `tasks` with `executor` (see the module docstring); returns its report.

    `on_result` is called after each image (tests use it to interrupt a run or kill a worker).
    An exception from the executor (a model error, Ctrl-C) propagates after the job outputs of
    the images done so far are written.
    """
    report = JobReport(total=len(tasks), out_dir=job.out_dir)
    job_outputs = job.plan.job_outputs(job.model.metadata(), [task.name for task in tasks])
    with out_folder(job) as trusted:
        pending = []
        for task in tasks:
            if trusted and job.plan.is_complete(job.out_dir, task.name, video=is_video(task.source)):
                skipped = ImageResult(task.name, task.display, SKIPPED)
                report.add(skipped)
                for output in job_outputs:
                    output.add(skipped)
            else:
                pending.append(task)
        bar = tqdm(total=len(pending), desc=f"predict {job.model.title}", unit="img",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)

        def handle(result: ImageResult) -> None:
            report.add(result)
            for output in job_outputs:
                output.add(result)
            if result.status == FAILED:
                tqdm.write(f"sceneparse predict: skipped {result.display}: {result.error}", file=sys.stderr)
            bar.update(1)
            if on_result is not None:
                on_result(result)

        start = time.monotonic()
        try:
            if pending:
                executor(job, pending, handle)
        finally:
            report.wall_seconds = time.monotonic() - start
            bar.close()
            for output in job_outputs:
                output.write(job.out_dir)
    return report
