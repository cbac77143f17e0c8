"""`sceneparse test --repository R --model NAME[:VERSION]`: evaluate a published version as it is served.

    sceneparse test --repository model_repository --model ade20k_pspnet50[:3]
                    [--config CFG] [--backend onnxruntime|triton] [--triton-url HOST:PORT] [KEY VALUE ...]

The version's own file runs in the serving backend (ONNX Runtime in this process, or Triton),
through the one inference pipeline, on the config's `test_list`: the config recorded at export
(in the version's sceneparse.json) or `--config`, with KEY VALUE overrides either way. The
outputs are the eager evaluation's (training.evaluate): gray/ and color/ PNGs in `save_folder`,
and for a labelled split the per-class table, printed and written as metrics.{json,csv,png}.

Geometry comes from the version: the crop, classes, mean/std and stride rate are the graph's;
the test protocol (base_size, scales, flip, the list and its shard) is the config's. For an
fp32 version the mIoU equals the eager checkpoint's (tests/training/test_evaluate_deployed.py).
The retraining pipeline gates on this figure: it is the figure of the artifact it publishes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from serving.pipeline import InferenceOptions, PipelineSpec
from serving.repository import ModelMetadata, ModelRepository, RepositoryError
from training.config import Config, as_config
from training.datasets import label_mapping
from training.evaluate import (
    EvaluationError,
    has_labels,
    inference_options,
    log_eval_result,
    must_be_set,
    predict_items,
    read_items,
    score_predictions,
    shard,
    write_result_reports,
)
from training.metrics import ABSENT_POLICIES
from training.reports import format_table

BACKENDS = ("onnxruntime", "triton")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_model(text: str) -> tuple[str, int | None]:
    """`NAME` or `NAME:VERSION` -> (name, version or None for the served version)."""
    name, _, version = text.partition(":")
    if not name:
        raise EvaluationError(f"--model must be NAME or NAME:VERSION, got {text!r}")
    if not version:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise EvaluationError(f"--model {text}: the version must be a positive integer, got {version!r}")
    return name, int(version)


def deployed_config(meta: ModelMetadata, config: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """The evaluation config: `config` (a YAML path) or the one recorded at export, plus overrides."""
    from training.config import config_from_mapping, load_config

    if config:
        cfg = load_config(config, list(overrides))
    else:
        if not meta.config:
            raise EvaluationError(f"{meta.name} v{meta.version} has no recorded config; give --config")
        cfg = config_from_mapping(meta.config)
        if overrides:
            cfg = cfg.merged(list(overrides))
    classes = cfg.classes
    if classes != meta.num_classes:
        raise EvaluationError(f"the config has {classes} classes, {meta.name} v{meta.version} {meta.num_classes}")
    crop = (cfg.test_h, cfg.test_w)
    if crop != (meta.crop_h, meta.crop_w):
        raise EvaluationError(
            f"the config's crop (test_h x test_w) is {crop[0]}x{crop[1]}, but {meta.name} v{meta.version}'s graph "
            f"takes {meta.crop_h}x{meta.crop_w} windows")
    return cfg


def deployed_spec(meta: ModelMetadata, cfg: Config) -> tuple[PipelineSpec, InferenceOptions]:
    """The version's geometry (crop, classes, mean/std, stride rate) with the config's protocol."""
    spec = PipelineSpec(meta.crop_h, meta.crop_w, meta.num_classes, tuple(meta.mean), tuple(meta.std),
                        cfg.base_size)
    protocol = inference_options(cfg)
    return spec, InferenceOptions(scales=protocol.scales, flip=protocol.flip, stride_rate=meta.stride_rate)


def open_backend(kind: str, repository: Path, triton_url: str | None = None, threads: int | None = None):
    """The serving backend `kind` as the gateway would build it from its settings."""
    from serving.backends.factory import create_backend
    from serving.settings import Settings

    if kind not in BACKENDS:
        raise EvaluationError(f"--backend must be one of {', '.join(BACKENDS)}, got {kind!r}")
    values = {"backend": kind, "repository": str(repository)}
    if triton_url:
        values["triton_url"] = triton_url
    if threads:
        values["ort_threads"] = int(threads)
    return create_backend(Settings(**values))


def evaluate_deployed(
    repository: str | Path | ModelRepository,
    name: str,
    version: int | None = None,
    cfg: Config | Mapping | None = None,
    *,
    backend: str = "onnxruntime",
    triton_url: str | None = None,
    threads: int | None = None,
    absent: str | None = None,
    progress: bool = True,
    write_report_files: bool = True,
) -> dict:
    """Predict (and, for a labelled split, score) a config's test_list with a published version.

    Args:
        repository: the model repository.
        name, version: the model and its version (None: the served one, pinned or newest).
        cfg: the evaluation config (a Config); None: the config recorded at export.
        backend: "onnxruntime" (in this process) or "triton" (at `triton_url`).
        threads: ONNX Runtime intra-op threads (None: the gateway's default).
        absent: "zero" or "exclude" (None: training.evaluate's default, "zero" as the original).
    Returns:
        training.evaluate.evaluate_dataset's dict (mIoU, mAcc, aAcc, per_class, ... for a
        labelled split; images, index_start, index_end, save_folder, seconds,
        seconds_per_image, reports) plus "model", "version", "precision" and "backend".
    """
    if absent is not None and absent not in ABSENT_POLICIES:
        raise EvaluationError(f"absent must be one of {ABSENT_POLICIES}, got {absent!r}")
    started = time.perf_counter()
    repo = repository if isinstance(repository, ModelRepository) else ModelRepository(repository)
    repo.check_root()
    meta = repo.read_metadata(name, version)
    cfg = deployed_config(meta) if cfg is None else as_config(cfg, partial=True)
    spec, options = deployed_spec(meta, cfg)
    save_folder = Path(must_be_set(cfg, "save_folder"))
    all_items = read_items(cfg)
    items, start, end = shard(all_items, cfg.index_start, cfg.index_step)
    seconds_per_image = None
    if not cfg.has_prediction:
        runner = open_backend(backend, repo.root, triton_url, threads).open(repo, meta)
        try:
            tick = time.perf_counter()
            predict_items(items, runner, spec, options, save_folder, np.asarray(meta.palette, dtype=np.uint8), progress)
            seconds_per_image = (time.perf_counter() - tick) / max(len(items), 1)
        finally:
            runner.close()
    result: dict = {}
    if has_labels(cfg):
        scoring = {"absent": absent} if absent is not None else {}
        result = score_predictions(items, save_folder / "gray", spec.num_classes, list(meta.classes),
                                   cfg.ignore_label, label_mapping(cfg.dataset, cfg.ignore_label),
                                   progress=progress, **scoring)
    result.update(images=len(items), index_start=start, index_end=end, save_folder=str(save_folder),
                  seconds=time.perf_counter() - started, seconds_per_image=seconds_per_image,
                  model=meta.name, version=meta.version, precision=meta.precision, backend=backend)
    reports: dict[str, str] = {}
    if has_labels(cfg) and write_report_files:
        source = {"repository": str(repo.root), "model": meta.name, "version": meta.version,
                  "precision": meta.precision, "backend": backend}
        reports = write_result_reports(result, cfg, spec, options, len(all_items), source)
    result["reports"] = reports
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sceneparse test --repository",
        description="Evaluate a published model version through the serving pipeline and backend, with the "
        "original test protocol; KEY VALUE pairs override the config (e.g. test_list LIST save_folder DIR).",
    )
    parser.add_argument("--repository", required=True, help="model repository root")
    parser.add_argument("--model", required=True, help="NAME or NAME:VERSION (default version: the served one)")
    parser.add_argument("--config", default=None, help="YAML config (default: the one recorded at export)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                        help="onnxruntime in this process (default) or a Triton server (--triton-url)")
    parser.add_argument("--triton-url", default=None, help="Triton host:port for --backend triton")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--absent", choices=ABSENT_POLICIES, default=None,
                        help="classes absent from prediction and label (default: as `sceneparse test`, zero)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="overrides: KEY VALUE ... (after the options)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """0 on success, 2 for a bad model/config/input, 1 when evaluation fails, 130 on ^C."""
    args = parse_args(argv)
    try:
        name, version = parse_model(args.model)
        repo = ModelRepository(args.repository)
        repo.check_root()
        meta = repo.read_metadata(name, version)
        cfg = deployed_config(meta, args.config, list(args.opts or []))
        result = evaluate_deployed(repo, name, meta.version, cfg, backend=args.backend, triton_url=args.triton_url,
                                   threads=args.threads, absent=args.absent, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("sceneparse test: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, RepositoryError) as exc:  # EvaluationError, ConfigError, ...
        print(f"sceneparse test: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # BackendUnavailable and the like: one line, never a traceback
        print(f"sceneparse test: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1
    what = f"{result['model']} v{result['version']} ({result['precision']}, {result['backend']})"
    if "per_class" in result:
        print(f"evaluated {what} on {result['images']} images")
        print(format_table(result))
        for kind, path in result["reports"].items():
            print(f"{kind}: {path}")
        log_eval_result(result)
    else:
        print(f"wrote {result['images']} predictions of {what} to {result['save_folder']} "
              "(split 'test' has no labels to score)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
