"""`sceneparse test`: the original test protocol over a split, then mIoU/mAcc/aAcc per class.

    sceneparse test --config CFG [KEY VALUE ...]

For each image of `test_list` (sliced by `index_start`/`index_step`) the model runs through the
one inference pipeline (`serving.pipeline`, with `training.runners.TorchRunner`): scales from
`scales`, long side `base_size * scale`, `test_h x test_w` sliding windows, flip averaging
(`flip`, default True). Class-id PNGs go to `<save_folder>/gray/`, palette PNGs to
`<save_folder>/color/`. When the split has labels (`split` is not "test") the predictions are
scored and the per-class table is printed and written to `<save_folder>/metrics.{json,csv,png}`
(`metrics_<start>-<end>.*` for a shard). `has_prediction: True` re-scores the PNGs already in
gray/ without running the model.

Library use (the retraining pipeline): `evaluate_dataset(cfg, model=...)` and
`score_predictions(...)` return `training.metrics.summarize`'s dict.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from serving.pipeline import InferenceOptions, PipelineSpec, PipelineStats, predict_label
from training.config import Config, as_config
from training.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from training.datasets import label_mapping
from training.metrics import ABSENT_POLICIES, DEFAULT_ABSENT, AreaMeter
from training.original_log import eval_result_lines, get_logger
from training.reports import format_table, write_reports


class EvaluationError(ValueError):
    """A split, prediction or setting that evaluation cannot use; the message names the file/key."""


@dataclass(frozen=True)
class EvaluationItem:
    """One image of the split: where it is, its label (None for the test split) and output name."""

    image_path: Path
    label_path: Path | None
    name: str  # file stem of the image: gray/<name>.png, color/<name>.png


# --- config ------------------------------------------------------------------------------------
# Every public function here takes a Config or a flat mapping (`training.config.as_config`, partial:
# evaluation needs no `arch` when it only re-scores predictions); the defaults are the schema's.
def must_be_set(cfg: Config, key: str) -> str:
    """An optional key (a path: test_list, model_path, save_folder) that sceneparse test needs."""
    if cfg[key] is None:
        raise EvaluationError(f"config key {key!r} is required for sceneparse test")
    return cfg[key]


def pipeline_spec(cfg: Config | Mapping) -> PipelineSpec:
    """The pipeline's geometry from the config: crop test_h x test_w, classes, base_size."""
    cfg = as_config(cfg, partial=True)
    return PipelineSpec(crop_h=cfg.test_h, crop_w=cfg.test_w, num_classes=cfg.classes, mean=IMAGENET_MEAN,
                        std=IMAGENET_STD, base_size=cfg.base_size)


def inference_options(cfg: Config | Mapping) -> InferenceOptions:
    """Scales (`scales`) and flip (`flip`) from the config."""
    cfg = as_config(cfg, partial=True)
    return InferenceOptions(scales=tuple(cfg.scales), flip=cfg.flip)


# --- the split ---------------------------------------------------------------------------------
def has_labels(cfg: Config | Mapping) -> bool:
    """The original scores every split but "test" (whose list may have no label column)."""
    return as_config(cfg, partial=True).split != "test"


def read_items(cfg: Config | Mapping) -> list[EvaluationItem]:
    """The images (and labels unless `split` is "test") of `test_list`, relative to `data_root`."""
    from training.data.lists import read_list

    cfg = as_config(cfg, partial=True)
    list_path = Path(must_be_set(cfg, "test_list"))
    split = cfg.split
    items = []
    seen: dict[str, str] = {}
    for image_path, label_path in read_list(list_path, cfg.data_root or ".", split):
        name = Path(image_path).stem
        if name in seen:
            raise EvaluationError(
                f"{list_path}: images {seen[name]} and {image_path} share the output name {name}.png"
            )
        seen[name] = image_path
        label = Path(label_path) if label_path is not None and split != "test" else None
        items.append(EvaluationItem(Path(image_path), label, name))
    return items


def shard(items: Sequence[EvaluationItem], index_start: int = 0, index_step: int = 0) -> tuple[list, int, int]:
    """The original's slicing: items[index_start : index_start + index_step] (step 0: to the end).

    Returns (items, start, end). Run shards with the same step and starts 0, step, 2*step, ... in
    parallel (one per GPU), then score all of them with `has_prediction True`.
    """
    if index_start < 0 or index_step < 0:
        raise EvaluationError(f"index_start and index_step must be >= 0, got {index_start} and {index_step}")
    if index_start > len(items):
        raise EvaluationError(f"index_start {index_start} is past the end of the {len(items)}-image list")
    end = len(items) if index_step == 0 else min(index_start + index_step, len(items))
    return list(items[index_start:end]), index_start, end


# --- images, labels, predictions ---------------------------------------------------------------
def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"cannot read image {path}: {exc}") from exc


def read_class_map(path: Path, what: str) -> np.ndarray:
    """(H, W) integer class ids of a single-channel (L, P, I;16) PNG."""
    try:
        with Image.open(path) as image:
            if image.mode not in {"L", "P", "I;16", "I"}:
                raise EvaluationError(f"{what} {path} is a {image.mode} image; expected single-channel class ids")
            return np.asarray(image)
    except FileNotFoundError as exc:
        raise EvaluationError(f"{what} {path} does not exist") from exc
    except OSError as exc:
        raise EvaluationError(f"cannot read {what} {path}: {exc}") from exc


def write_prediction(label: np.ndarray, gray_path: Path, color_path: Path, palette: np.ndarray) -> None:
    """gray: class ids (8-bit, or 16-bit past 256 classes); color: a palette ('P') PNG."""
    if label.max(initial=0) < 256:
        Image.fromarray(label.astype(np.uint8)).save(gray_path)
        color = Image.fromarray(label.astype(np.uint8), mode="P")
        flat = np.zeros((256, 3), dtype=np.uint8)
        flat[: min(len(palette), 256)] = palette[:256]
        color.putpalette(flat.reshape(-1).tolist())
        color.save(color_path)
    else:
        Image.fromarray(label.astype(np.uint16)).save(gray_path)
        Image.fromarray(palette[label]).save(color_path)


# --- the two halves ----------------------------------------------------------------------------
def predict_items(
    items: Sequence[EvaluationItem],
    runner,
    spec: PipelineSpec,
    options: InferenceOptions,
    save_folder: str | Path,
    palette: np.ndarray,
    progress: bool = True,
) -> PipelineStats:
    """Run the pipeline on every item; write gray/<name>.png and color/<name>.png into save_folder."""
    gray_folder, color_folder = Path(save_folder) / "gray", Path(save_folder) / "color"
    gray_folder.mkdir(parents=True, exist_ok=True)
    color_folder.mkdir(parents=True, exist_ok=True)
    stats = PipelineStats()
    for item in tqdm(items, desc="predict", unit="img", disable=not progress, dynamic_ncols=True):
        label = predict_label(read_image(item.image_path), runner, spec, options, stats)
        write_prediction(label, gray_folder / f"{item.name}.png", color_folder / f"{item.name}.png", palette)
    return stats


def score_predictions(
    items: Sequence[EvaluationItem],
    gray_folder: str | Path,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_label: int = 255,
    label_mapping=None,
    absent: str = DEFAULT_ABSENT,
    progress: bool = True,
) -> dict:
    """Score gray/<name>.png of each item against its label.

    Args:
        items: with label paths.
        gray_folder: folder of class-id PNGs named after the images.
        label_mapping: optional callable, raw label array -> class ids (ADE20K, Cityscapes).
    Returns:
        `training.metrics.summarize`'s dict plus "images" (how many were scored).
    """
    meter = AreaMeter(num_classes, ignore_label)
    gray_folder = Path(gray_folder)
    for item in tqdm(items, desc="score", unit="img", disable=not progress, dynamic_ncols=True):
        if item.label_path is None:
            raise EvaluationError(f"{item.image_path} has no label to score against")
        prediction = read_class_map(gray_folder / f"{item.name}.png", "prediction")
        target = read_class_map(item.label_path, "label")
        if label_mapping is not None:
            target = label_mapping(target)
        if prediction.shape != target.shape:
            raise EvaluationError(
                f"prediction {gray_folder / item.name}.png is {prediction.shape[1]}x{prediction.shape[0]} "
                f"but label {item.label_path} is {target.shape[1]}x{target.shape[0]}"
            )
        try:
            meter.update(prediction, target)
        except ValueError as exc:
            raise EvaluationError(f"label {item.label_path}: {exc}") from exc
    metrics = meter.summary(class_names, absent)
    metrics["images"] = len(items)
    return metrics


# --- the whole run -----------------------------------------------------------------------------
def default_device(cfg: Config | Mapping) -> str:
    """cuda:<first of test_gpu> when CUDA is available and test_gpu lists a GPU, else cpu."""
    import torch

    gpus = list(as_config(cfg, partial=True).test_gpu or [])
    return f"cuda:{int(gpus[0])}" if gpus and torch.cuda.is_available() else "cpu"


def load_model(cfg: Config | Mapping):
    """The config's network without aux head, weights from `model_path` (eval mode, CPU)."""
    from training.models import build_model, load_checkpoint

    cfg = as_config(cfg, partial=True)
    model_path = Path(must_be_set(cfg, "model_path"))
    if not model_path.is_file():
        raise EvaluationError(f"config key 'model_path': checkpoint {model_path} does not exist")
    # The checkpoint holds every weight: do not read ImageNet backbone weights first.
    model = build_model(cfg.merged({"pretrained_backbone": None}), aux=False)
    load_checkpoint(model, model_path)
    return model.eval()


def report_stem(start: int, end: int, total: int) -> str:
    """`metrics` for a whole list, `metrics_<start>-<end>` for a shard (shards never overwrite)."""
    return "metrics" if (start, end) == (0, total) else f"metrics_{start}-{end}"


def evaluate_dataset(
    cfg,
    model=None,
    *,
    device: str | None = None,
    batch_size: int = 4,
    absent: str = DEFAULT_ABSENT,
    progress: bool = True,
    write_report_files: bool = True,
) -> dict:
    """Predict (unless `has_prediction`) and score a config's `test_list` shard.

    Args:
        cfg: a `training.config.Config` (or mapping) with the DATA and TEST keys.
        model: an nn.Module to evaluate; None builds it from the config and loads `model_path`.
        device: torch device for the model (default: see `default_device`).
        batch_size: windows per forward pass.
        absent: "zero" (the original's averaging, default) or "exclude" (see `training.metrics`).
        progress: show tqdm bars (rate and ETA).
        write_report_files: write `<save_folder>/<stem>.{json,csv,png}` when scoring.
    Returns:
        `training.metrics.summarize`'s dict (mIoU, mAcc, aAcc, per_class, ...) when the split has
        labels, plus always: "images", "index_start", "index_end", "save_folder", "seconds",
        "seconds_per_image" (prediction only; None when re-scoring), "reports" ({kind: path}).
    """
    from training.datasets import dataset_info_for_config

    if absent not in ABSENT_POLICIES:
        raise EvaluationError(f"absent must be one of {ABSENT_POLICIES}, got {absent!r}")
    started = time.perf_counter()
    cfg = as_config(cfg, partial=True)
    info = dataset_info_for_config(cfg)
    spec, options = pipeline_spec(cfg), inference_options(cfg)
    save_folder = Path(must_be_set(cfg, "save_folder"))
    all_items = read_items(cfg)
    items, start, end = shard(all_items, cfg.index_start, cfg.index_step)
    result: dict = {}
    seconds_per_image = None
    if not cfg.has_prediction:
        from training.runners import TorchRunner

        model = load_model(cfg) if model is None else model
        runner = TorchRunner(
            model,
            device or default_device(cfg),
            max_batch_size=batch_size,
            amp=cfg.amp,
            channels_last=cfg.channels_last,
        )
        tick = time.perf_counter()
        predict_items(items, runner, spec, options, save_folder, info.palette, progress)
        seconds_per_image = (time.perf_counter() - tick) / max(len(items), 1)
    reports: dict[str, str] = {}
    if has_labels(cfg):
        result = score_predictions(
            items,
            save_folder / "gray",
            spec.num_classes,
            list(info.classes),
            cfg.ignore_label,
            label_mapping(cfg.dataset, cfg.ignore_label),
            absent,
            progress,
        )
    result.update(
        images=len(items),
        index_start=start,
        index_end=end,
        save_folder=str(save_folder),
        seconds=time.perf_counter() - started,
        seconds_per_image=seconds_per_image,
    )
    if has_labels(cfg) and write_report_files:
        source = {"config": str(cfg.path or ""), "model_path": str(cfg.model_path or "")}
        reports = write_result_reports(result, cfg, spec, options, len(all_items), source)
    result["reports"] = reports
    return result


def write_result_reports(result: dict, cfg: Config, spec: PipelineSpec, options: InferenceOptions, total: int,
                         source: dict) -> dict[str, str]:
    """`<save_folder>/<stem>.{json,csv,png}` of a scored run (`report_stem`), with the run's settings:
    `source` (what was evaluated) and the protocol. Returns {kind: path}."""
    settings = {
        **source,
        "test_list": str(cfg.test_list or ""),
        "split": cfg.split,
        "scales": list(options.scales),
        "flip": options.flip,
        "base_size": spec.base_size,
        "crop": [spec.crop_h, spec.crop_w],
    }
    extra = {key: result[key] for key in ("images", "index_start", "index_end", "seconds_per_image")}
    stem = report_stem(result["index_start"], result["index_end"], total)
    paths = write_reports(result, result["save_folder"], stem, {**extra, "settings": settings})
    return {kind: str(path) for kind, path in paths.items()}


# --- command line ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sceneparse test",
        description="Evaluate a checkpoint with the original test protocol (scales, sliding window, flip); "
        "KEY VALUE pairs override the config (e.g. scales '[0.5,0.75,1.0,1.25,1.5,1.75]').",
    )
    parser.add_argument("--config", required=True, help="YAML config, e.g. training/config/ade20k/ade20k_pspnet50.yaml")
    parser.add_argument("--device", default=None, help="torch device (default: cuda:<test_gpu[0]> if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    parser.add_argument(
        "--absent",
        choices=ABSENT_POLICIES,
        default=DEFAULT_ABSENT,
        help="classes absent from prediction and label: count as 0 in the means like the original "
        "(zero, default) or leave them out (exclude)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="overrides: KEY VALUE ... (after the options)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """`sceneparse test`: 0 on success, 2 for a bad config/input, 1 when evaluation fails, 130 on ^C."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        from training.config import load_config

        cfg = load_config(args.config, list(args.opts or []))
        if args.batch_size < 1:
            raise EvaluationError(f"--batch-size must be at least 1, got {args.batch_size}")
        result = evaluate_dataset(
            cfg, device=args.device, batch_size=args.batch_size, absent=args.absent, progress=not args.no_progress
        )
    except KeyboardInterrupt:
        print("sceneparse test: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError) as exc:  # EvaluationError, ConfigError, DataListError, ...
        print(f"sceneparse test: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"sceneparse test: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1
    if "per_class" in result:
        print(format_table(result))
        for kind, path in result["reports"].items():
            print(f"{kind}: {path}")
        log_eval_result(result)
    else:
        print(f"wrote {result['images']} predictions to {result['save_folder']} (split 'test' has no labels to score)")
    return 0


def log_eval_result(result: dict) -> None:
    """The original test script's result lines on stderr (`Eval result: ...`, `Class_i result: ...`)."""
    logger = get_logger()
    for line in eval_result_lines(result):
        logger.info(line)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
