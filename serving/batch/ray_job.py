"""`sceneparse predict --ray`: the job's images as a Ray Data dataset, mapped by a pool of actors.

The driver lists the inputs and decides what to skip (serving.batch.job); the pending tasks
become a dataset of small rows (source, name), cut into blocks of a few images. Each actor of
the pool (`--workers`, each with `--cpus-per-worker` CPUs or `--gpus-per-worker` GPUs) opens
the model version once, with its own ONNX Runtime session (the CUDA provider on GPU actors, as
many intra-op threads as it has CPUs) or its own Triton client, and runs the same
`ImagePredictor` as the single-process path on every image of its blocks: it reads the file,
writes its outputs atomically under --out, and returns a small result row to the driver,
which streams them into the progress bar, the report and the job outputs.

Fault tolerance is Ray's: an actor that dies (killed, out of memory, its node lost) is restarted
and the blocks it had in flight are resubmitted (Ray Data's actor pools default to unlimited
restarts and task retries). A block redone rewrites the same bytes, atomically, and every output
file belongs to exactly one task, so no two workers ever write the same file; temporary files of
a killed writer are removed by the driver at the end.

On a cluster every node needs sceneparse installed, and --repository and --out must be the same
shared folder on every node (inputs may also be object storage URIs). Ray is imported only here,
and only when a job runs.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from serving.batch.image import ImageResult
from serving.batch.inputs import ImageTask
from serving.batch.job import JobError, PredictJob, ResultCallback

# Blocks are Ray's unit of scheduling and of retry: small enough that a dead actor costs little
# work and the progress bar moves, big enough that 100k images are not 100k tasks.
MAX_IMAGES_PER_BLOCK = 16
BLOCKS_PER_WORKER = 4


def import_ray():
    """The `ray` module with Ray Data, or a JobError that says how to install it."""
    try:
        import ray
        import ray.data  # Ray Data is the `data` extra of ray
    except ImportError as exc:
        raise JobError(f"--ray needs Ray Data ({exc}); install the ray extra: pip install 'sceneparse[ray]'") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray job runs.

    `address`: None or "local" start a local Ray instance (stopped at the end), "auto" joins the
    cluster running on this machine, "host:port" or "ray://host:port" a remote one. When this
    process is already connected to Ray (ray.init was called), that connection is used.
    `workers`: actors in the pool (None: as many as the cluster's CPUs, or GPUs, allow).
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"--cpus-per-worker must be positive, got {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must not be negative, got {self.gpus_per_worker}")


class PredictActor:
    """One worker of the pool: opens the model version once, then predicts the images of its batches."""

    def __init__(self, job: PredictJob):
        self._context = job.predictor()
        self.predict = self._context.__enter__()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows = []
        for source, name, filesystem_uri in zip(batch["source"], batch["name"], batch["filesystem_uri"], strict=True):
            task = ImageTask(str(source), str(name), str(filesystem_uri) or None)
            rows.append(self.predict(task).to_row())
        return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


def connect(ray, address: str | None) -> bool:
    """Connect this process to Ray; returns whether it started a local instance (to shut down after)."""
    if ray.is_initialized():
        return False
    if address in (None, "local"):
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
        return True
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise JobError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    return False


def pool_size(ray, options: RayOptions, local: bool) -> int:
    """The number of actors: --workers, checked against what the cluster has; or all it has room for."""
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if options.gpus_per_worker > 0:
        fits, need = int(gpus // options.gpus_per_worker), f"{options.gpus_per_worker:g} GPU"
    else:
        fits, need = int(cpus // options.cpus_per_worker), f"{options.cpus_per_worker:g} CPU"
    have = f"{cpus:g} CPUs and {gpus:g} GPUs"
    if options.workers is None:
        if fits < 1:
            raise JobError(f"the Ray cluster has {have}; a worker needs {need}")
        return fits
    if options.workers > fits:
        message = f"{options.workers} workers of {need} each do not fit the Ray cluster's {have}"
        if local:
            raise JobError(message + "; ask for fewer --workers")
        # A joined cluster may have an autoscaler that adds nodes: wait for it rather than refuse.
        print(f"sceneparse predict: warning: {message}; waiting for the cluster to grow", file=sys.stderr)
    return options.workers


def _quiet_ray_data(ray) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows its own bar, counted in images
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # It would warn, once per process, that the progress bars we just turned off are off.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


class RayExecutor:
    """Runs a job's pending tasks on Ray (see the module docstring); an `Executor` for `run_job`.

    As a context manager it connects to Ray and sizes the pool on entry (so that a cluster
    problem is reported before the out folder is touched) and stops a local instance it started
    on exit; called outside one, it does both around the job.
    """

    def __init__(self, options: RayOptions):
        self.options = options
        self.workers = 0
        self._ray = None
        self._started = False

    def __enter__(self) -> RayExecutor:
        ray = import_ray()
        self._started = connect(ray, self.options.address)
        self._ray = ray
        try:
            _quiet_ray_data(ray)
            self.workers = pool_size(ray, self.options, local=self._started or self.options.address in (None, "local"))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._ray is not None and self._started:
            self._ray.shutdown()
        self._ray, self._started = None, False

    def __call__(self, job: PredictJob, tasks: list[ImageTask], on_result: ResultCallback) -> None:
        if self._ray is None:
            with self:
                return self(job, tasks, on_result)
        ray = self._ray
        try:
            for row in self.dataset(ray, job, tasks).iter_rows():
                on_result(ImageResult.from_row(row))
        except ray.exceptions.RayError as exc:
            # Ray's message carries remote tracebacks; its last line names the error itself.
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise JobError(f"the Ray job failed: {lines[-1] if lines else type(exc).__name__}") from exc

    def dataset(self, ray, job: PredictJob, tasks: list[ImageTask]):
        """The Ray Data pipeline: task rows -> the actor pool -> result rows."""
        options = self.options
        gpu = options.gpus_per_worker > 0
        # Each actor's session gets as many threads as the CPUs Ray gave it; CPU actors never
        # touch a GPU even where onnxruntime-gpu is installed.
        model = replace(job.model, device="cuda" if gpu else "cpu", threads=max(1, math.floor(options.cpus_per_worker)))
        job = replace(job, model=model, progress=False)  # an actor's frame bars would only clutter the driver's
        rows = [{"source": t.source, "name": t.name, "filesystem_uri": t.filesystem_uri or ""} for t in tasks]
        blocks = min(len(rows), max(math.ceil(len(rows) / MAX_IMAGES_PER_BLOCK), self.workers * BLOCKS_PER_WORKER))
        resources: dict[str, Any] = {"num_cpus": options.cpus_per_worker}
        if gpu:
            resources["num_gpus"] = options.gpus_per_worker
        return ray.data.from_items(rows, override_num_blocks=max(1, blocks)).map_batches(
            PredictActor,
            fn_constructor_args=(job,),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            **resources,
        )
