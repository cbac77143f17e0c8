"""`sceneparse predict`: segment image and video files, folders, list files and URIs offline with a published model.

Same decoding, pipeline and rendering as the gateway, so a file gives the same mask here as
through POST /v1/segment. In one process by default; with `--ray [ADDRESS]` as a Ray Data job
over a pool of workers (docs/batch.md), writing byte-identical files. Either way a rerun skips
images whose outputs are complete, unreadable files are listed in `<out>/failures.json` and
skipped, and the exit status is 0 when every image has its outputs, 1 when some failed, 2 on a
usage, model or cluster error and 130 when interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import replace
from pathlib import Path

from sceneparse.digest import file_sha256
from serving.backends.base import BackendUnavailable
from serving.batch.image import ImageLimits
from serving.batch.inputs import InputError, collect_tasks, is_uri, is_video
from serving.batch.job import CheckpointSpec, Executor, JobError, ModelSpec, PredictJob, run_job, run_local
from serving.batch.outputs import OUTPUT_KINDS, OutputPlan
from serving.class_filter import parse_classes
from serving.pipeline import validate_scales
from serving.repository import ModelMetadata, ModelRepository, RepositoryError
from serving.segmentation import SegmentOptions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sceneparse predict",
        description="Segment image files and folders with a published model (the gateway's pipeline, offline).",
    )
    parser.add_argument("inputs", nargs="*", help="image files, folders (searched recursively) and/or URIs "
                                                  "(s3://, gs://, ... with the ray extra)")
    parser.add_argument("--list", action="append", default=[], metavar="FILE",
                        help="list file in the original format (`image [label]` per line); may repeat")
    parser.add_argument("--data-root", default=".", help="folder the --list paths are relative to (default: .)")
    parser.add_argument("--model", help="model name in the repository (or --config and --checkpoint)")
    parser.add_argument("--model-version", type=int, default=None,
                        help="version to run (default: the served one, i.e. pinned or newest)")
    parser.add_argument("--repository", default="model_repository", help="model repository (default: model_repository)")
    parser.add_argument("--out", required=True, help="folder for the PNGs (created)")
    parser.add_argument("--output", choices=list(OUTPUT_KINDS), default="color",
                        help="color: palette PNG; label: class-id PNG; overlay: mask on the photo; confidence: "
                             "8-bit PNG of the winning class's probability; rle: <name>.rle.json with COCO RLE "
                             "per class; coco: rle plus results.json and categories.json for all inputs "
                             "(default: color)")
    parser.add_argument("--classes", default=None, metavar="NAMES_OR_IDS",
                        help="comma-separated class names or ids: report only these (label: others 255; color: "
                             "others transparent; overlay: others unpainted; confidence: others 0; rle/coco: "
                             "only these listed)")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write <name>.npz: float16 (classes, H, W) probabilities, compressed "
                             "(2 bytes per pixel and class before compression)")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask opacity for --output overlay (default: 0.5)")
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="videos: segment every Nth frame; the frames between repeat the last mask (default: 1)")
    parser.add_argument("--scales", help="comma-separated test scales (default: the model's)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="add mirrored crops (default: the model's)")
    parser.add_argument("--max-side", type=int, default=None,
                        help="shrink images to this long side for inference (default: never)")
    parser.add_argument("--max-pixels", type=int, default=40_000_000,
                        help="skip (as failed) images with more pixels than this (default: 40000000)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every image, also those whose outputs are complete from an earlier run")
    parser.add_argument("--backend", choices=["onnxruntime", "triton"], default="onnxruntime")
    parser.add_argument("--triton-url", default=None, help="Triton host:port for --backend triton")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    eager = parser.add_argument_group("straight from a checkpoint, in eager PyTorch (pip install 'sceneparse[train]')")
    eager.add_argument("--config", help="the checkpoint's YAML config (original format) or a shipped config's name")
    eager.add_argument("--checkpoint", help="weights: an original release, a state dict or a sceneparse checkpoint")
    eager.add_argument("--device", default="auto", help="torch device: auto (CUDA when there is one), cpu, cuda, "
                                                       "cuda:1, ... (default: auto)")
    ray = parser.add_argument_group("Ray (pip install 'sceneparse[ray]'; docs/batch.md)")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="run as a Ray Data job: no ADDRESS starts a local Ray instance, `auto` joins the "
                          "cluster of this machine, HOST:PORT or ray://HOST:PORT a remote one")
    ray.add_argument("--workers", type=int, default=None,
                     help="actors in the pool, each with its own model session (default: as many as fit)")
    ray.add_argument("--cpus-per-worker", type=float, default=None,
                     help="CPUs per actor, also its ONNX Runtime threads (default: 1)")
    ray.add_argument("--gpus-per-worker", type=float, default=0.0,
                     help="GPUs per actor (fractions share a GPU); >0 runs ONNX Runtime's CUDA provider (default: 0)")
    return parser


def _looks_like_ray_address(value: str) -> bool:
    return value in {"local", "auto"} or value.startswith("ray://") or (":" in value and not Path(value).exists())


def _executor(args: argparse.Namespace) -> Executor:
    if args.ray is None:
        given = [flag for flag, value in (("--workers", args.workers), ("--cpus-per-worker", args.cpus_per_worker),
                                          ("--gpus-per-worker", args.gpus_per_worker or None)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to Ray jobs: add --ray")
        return run_local
    if not _looks_like_ray_address(args.ray):
        raise ValueError(f"--ray {args.ray}: not a Ray address (auto, local, HOST:PORT or ray://HOST:PORT); "
                         "write --ray=local, or put --ray after the inputs")
    from serving.batch.ray_job import RayExecutor, RayOptions

    cpus = args.cpus_per_worker if args.cpus_per_worker is not None else 1.0
    return RayExecutor(RayOptions(args.ray, args.workers, cpus, args.gpus_per_worker))


def _model(args: argparse.Namespace) -> tuple[ModelSpec | CheckpointSpec, ModelMetadata]:
    """The model to run: a published version (--model), or a checkpoint with its config."""
    if args.config or args.checkpoint:
        if args.model or not (args.config and args.checkpoint):
            raise ValueError("give --model NAME (a published model), or --config and --checkpoint (not both)")
        if args.model_version is not None or args.backend != "onnxruntime" or args.triton_url:
            raise ValueError("--model-version, --backend and --triton-url are for published models, "
                             "not --checkpoint (which runs in eager PyTorch)")
        return _checkpoint_model(args)
    if not args.model:
        raise ValueError("give --model NAME (a published model), or --config and --checkpoint")
    repository = ModelRepository(args.repository)
    repository.check_root()
    meta = repository.read_metadata(args.model, args.model_version)
    return ModelSpec(str(repository.root), meta.name, meta.version, args.backend, triton_url=args.triton_url), meta


def _checkpoint_model(args: argparse.Namespace) -> tuple[CheckpointSpec, ModelMetadata]:
    try:
        from training.checkpoint_model import checkpoint_metadata, read_config
    except ModuleNotFoundError as exc:
        if exc.name in {"torch", "torchvision"}:
            raise ValueError(f"--checkpoint needs {exc.name}; install the training extra: "
                             "pip install 'sceneparse[train]'") from None
        raise
    checkpoint = Path(args.checkpoint).absolute()
    if not checkpoint.is_file():
        raise ValueError(f"--checkpoint {checkpoint}: no such file")
    config_file = Path(args.config)
    # A shipped config's name stays a name; a file is passed on as an absolute path (Ray workers).
    config = str(config_file.absolute()) if config_file.is_file() else args.config
    meta = checkpoint_metadata(read_config(config), checkpoint)
    return CheckpointSpec(config, str(checkpoint), file_sha256(checkpoint), device=args.device), meta


def build_job(args: argparse.Namespace) -> tuple[PredictJob, list]:
    """The job and its tasks from parsed flags. Raises ValueError, InputError or RepositoryError."""
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must lie within [0, 1], got {args.alpha}")
    if args.max_side is not None and args.max_side < 32:
        raise ValueError(f"--max-side must be at least 32, got {args.max_side}")
    if args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be positive, got {args.max_pixels}")
    if args.every < 1:
        raise ValueError(f"--every must be at least 1, got {args.every}")
    model, meta = _model(args)
    scales = meta.test_scales
    if args.scales:
        scales = validate_scales([float(s) for s in args.scales.split(",") if s.strip()])
    options = SegmentOptions(
        scales=tuple(scales), flip=meta.flip if args.flip is None else args.flip,
        stride_rate=meta.stride_rate, max_side=args.max_side,
    )
    if is_uri(args.out):
        raise ValueError(f"--out {args.out}: outputs go to a local or shared folder, not a URI")
    out_dir = Path(args.out).absolute()
    if not args.inputs and not args.list:
        raise ValueError("no inputs: give image files, folders, URIs or --list FILE")
    tasks = collect_tasks(args.inputs, args.list, args.data_root, exclude=out_dir)
    if not tasks:
        raise ValueError(f"no image files found in {', '.join(args.inputs + args.list)}")
    chosen = parse_classes(args.classes, meta.classes)  # ClassFilterError is a ValueError: a usage error
    plan = OutputPlan.for_kinds([args.output], args.alpha, chosen, args.probabilities)
    if any(is_video(task.source) for task in tasks):
        from serving.batch.video import VideoOutput, check_video_outputs

        check_video_outputs([args.output], args.probabilities)
        plan = replace(plan, video=VideoOutput(args.output, args.alpha, chosen, args.every))
    job = PredictJob(model, out_dir, plan, options, ImageLimits(max_pixels=args.max_pixels),
                     overwrite=args.overwrite, progress=not args.no_progress)
    return job, tasks


def main(argv: list[str] | None = None) -> int:
    """Returns 0 when every image has its outputs, 1 when some failed, 2 on a usage, model or cluster error."""
    args = build_parser().parse_args(argv)
    try:
        executor = _executor(args)
        job, tasks = build_job(args)
        # Connects to Ray (or starts it) and sizes the pool before the out folder is touched.
        with executor if isinstance(executor, contextlib.AbstractContextManager) else contextlib.nullcontext():
            report = run_job(job, tasks, executor, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("sceneparse predict: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (RepositoryError, InputError, JobError, FileNotFoundError, ValueError, RuntimeError,
            BackendUnavailable) as exc:
        print(f"sceneparse predict: {exc}", file=sys.stderr)
        return 2
    print(f"sceneparse predict: {report.summary()}", file=sys.stderr)
    if report.processed:
        print(report.table(), file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
