"""`sceneparse train --config CFG [KEY VALUE ...]`: PSPNet/PSANet training with the original recipe.

Reads top to bottom: `main()` -> `run_training()` (launch: one process, spawned workers or
torchrun) -> `main_worker()` (model, optimizer, data, resume) -> `train_one_epoch()` and
`evaluate()` per epoch -> checkpoints. Distributed plumbing lives in `training.distributed`, CPU
SyncBN in `training.syncbn`, the recipe's optimizer and poly schedule in `training.optim`,
checkpoint files in `training.checkpoints`.

Launch modes:
- one process: `train_gpu` lists one GPU, or none is usable (CPU);
- spawned: `train_gpu` lists several GPUs (one process each, meeting on a free local port, as the
  original), or `--cpu-processes N` on the CPU (gloo, CPU SyncBN);
- torchrun: `torchrun --nproc_per_node G [--nnodes ...] -m training.train --config CFG ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from sceneparse.atomic import atomic_path
from training import distributed as du
from training.checkpoints import (
    CHECKPOINT_FORMAT,
    TEMP_PREFIX,
    atomic_save,
    capture_rng_state,
    epoch_checkpoint_path,
    from_original_layout,
    load_training_checkpoint,
    prune_epoch_checkpoints,
    remove_stale_temporaries,
    restore_rng_state,
    to_original_layout,
)
from training.config import Config, as_config
from training.datasets import label_mapping as dataset_label_mapping
from training.metrics import ABSENT_POLICIES, DEFAULT_ABSENT
from training.optim import build_optimizer, poly_learning_rate, set_learning_rate
from training.original_log import (
    EVALUATION_END,
    EVALUATION_START,
    RunningAverage,
    get_logger,
    iteration_line,
    train_result_line,
    val_batch_line,
    val_result_lines,
)
from training.precision import Precision, resolve_precision
from training.syncbn import convert_sync_batchnorm, freeze_batchnorm, set_frozen_bn_eval

__all__ = ["TrainingError", "build_criterion", "evaluate", "main", "main_worker", "run_training", "train_one_epoch"]

CURVES_FILE = "training_curves.png"
LAST_CHECKPOINT = "last.pth"
FINAL_CHECKPOINT = "final.pth"


class TrainingError(RuntimeError):
    """A problem with the run itself (bad option combination, diverging loss, empty loader)."""


def _note(message: str) -> None:
    if du.is_main_process():
        print(f"note: {message}", file=sys.stderr)


def _log(message: str) -> None:
    """One line of the original's log (its `=> loading ...` / result lines), main process only."""
    if du.is_main_process():
        get_logger().info(message)


# --------------------------------------------------------------------------------------------
# One epoch of training and one pass of validation
# --------------------------------------------------------------------------------------------


def labels_for_logits(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Subsample labels (N, H, W) to the logits' (h, w) with corner-aligned nearest neighbour.

    With H = 8k+1 and h = (H-1)/8*zoom+1 this picks every (8/zoom)-th row and column, the pixels
    the logits are aligned to; labels are never interpolated.
    """
    height, width = target.shape[-2:]
    if (height, width) == tuple(size):
        return target
    rows = torch.linspace(0, height - 1, size[0], device=target.device).round().long()
    cols = torch.linspace(0, width - 1, size[1], device=target.device).round().long()
    return target.index_select(-2, rows).index_select(-1, cols)


def build_criterion(cfg: Config) -> nn.Module:
    """The original's loss, for the main and the aux head alike: cross-entropy over the classes,
    pixels labelled `ignore_label` left out of the loss and of its mean."""
    return nn.CrossEntropyLoss(ignore_index=int(cfg.ignore_label))


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    epoch: int,
    cfg: Config,
    *,
    device: torch.device,
    max_iter: int,
    scaler: torch.amp.GradScaler,
    autocast_dtype: torch.dtype | None,
    channels_last: bool,
    writer: Any = None,
    absent: str = DEFAULT_ABSENT,
) -> dict[str, float]:
    """Train for one epoch with the poly schedule set before every step.

    As the original, every iteration's losses and pixel areas are summed over all processes (one
    all-reduce), every `print_freq` iterations the original's `Epoch: [e/E][i/N] Data ... Batch ...
    Remain ... MainLoss ... AuxLoss ... Loss ... Accuracy ...` line is logged and the
    `*_train_batch` TensorBoard scalars written, and the epoch ends with
    `Train result at epoch [e/E]: mIoU/mAcc/allAcc ...` (areas of the argmax of the main logits
    against the labels the loss saw).

    Args:
        model: the (possibly DDP-wrapped) model; in train mode it returns (main_logits, aux_logits).
        loader: batches of (images float32 (N, 3, H, W) normalised, labels int64 (N, H, W)).
        epoch: 0-based epoch; iteration numbers continue as epoch * len(loader) + i.
        max_iter: epochs * len(loader), the end of the poly schedule.
        absent: how the epoch's training mIoU/mAcc average absent classes ("zero": the original).
    Returns:
        {"loss", "main_loss", "aux_loss"}: sample-weighted means over this epoch and all
        processes; "lr": the backbone rate of the epoch's last step; "train_mIoU", "train_mAcc",
        "train_aAcc": the epoch's training-batch metrics.
    """
    from training.metrics import intersection_and_union_torch, summarize

    model.train()
    if cfg.frozen_bn:
        set_frozen_bn_eval(model)
    classes = int(cfg.classes)
    # Per iteration, summed over processes: main, aux, total (each x samples), samples, then the
    # intersection, union and target areas. float64 holds the pixel counts exactly.
    epoch_sums = torch.zeros(4 + 3 * classes, dtype=torch.float64)
    data_time, batch_time = RunningAverage(), RunningAverage()
    lr = float(optimizer.param_groups[0]["lr"])
    main_process = du.is_main_process()
    logger = get_logger() if main_process else None
    progress = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not main_process,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    end = time.perf_counter()
    for i, (images, target) in enumerate(progress):
        data_time.update(time.perf_counter() - end)
        iteration = epoch * len(loader) + i
        lr = poly_learning_rate(cfg.base_lr, iteration, max_iter, cfg.power)
        set_learning_rate(optimizer, lr)
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)

        autocast = (
            torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        )
        with autocast:
            output = model(images)
            main_logits, aux_logits = output if isinstance(output, tuple) else (output, None)
            target = labels_for_logits(target, main_logits.shape[-2:])
            main_loss = criterion(main_logits.float(), target)
            aux_loss = criterion(aux_logits.float(), target) if aux_logits is not None else main_loss.new_zeros(())
            loss = main_loss + cfg.aux_weight * aux_loss
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} at epoch {epoch + 1}, iteration {i + 1}: lower base_lr?")

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        n = images.size(0)
        areas = intersection_and_union_torch(main_logits.detach().argmax(1), target, classes, cfg.ignore_label)
        packed = torch.cat([
            torch.stack([main_loss.detach(), aux_loss.detach(), loss.detach()]).double() * n,
            torch.tensor([float(n)], dtype=torch.float64, device=loss.device),
            *(area.double() for area in areas),
        ])
        batch = du.all_reduce_sum(packed).cpu()
        epoch_sums += batch
        samples = float(batch[3])
        main_value, aux_value, loss_value = (float(v) / samples for v in batch[:3])
        inter, union, tgt = (batch[4 + k * classes:4 + (k + 1) * classes].numpy() for k in range(3))
        accuracy = float(inter.sum() / (tgt.sum() + 1e-10))
        batch_time.update(time.perf_counter() - end)
        end = time.perf_counter()

        progress.set_postfix(loss=f"{loss_value:.4f}", aux=f"{aux_value:.4f}", lr=f"{lr:.2e}", refresh=False)
        step = iteration + 1
        if main_process and (i + 1) % max(1, cfg.print_freq) == 0:
            logger.info(iteration_line(
                epoch + 1, cfg.epochs, i + 1, len(loader), data=(data_time.val, data_time.avg),
                batch=(batch_time.val, batch_time.avg), remain=(max_iter - step) * batch_time.avg,
                main_loss=main_value, aux_loss=aux_value, loss=loss_value, accuracy=accuracy))
        if writer is not None:
            # The original's per-iteration tags (every iteration, as it wrote them) ...
            writer.add_scalar("loss_train_batch", main_value, step)
            writer.add_scalar("mIoU_train_batch", float(np.mean(inter / (union + 1e-10))), step)
            writer.add_scalar("mAcc_train_batch", float(np.mean(inter / (tgt + 1e-10))), step)
            writer.add_scalar("allAcc_train_batch", accuracy, step)
            if step % max(1, cfg.print_freq) == 0:  # ... and sceneparse's, every print_freq
                writer.add_scalar("train/loss", loss_value, step)
                writer.add_scalar("train/main_loss", main_value, step)
                writer.add_scalar("train/aux_loss", aux_value, step)
                writer.add_scalar("train/lr", lr, step)
    progress.close()
    samples = max(float(epoch_sums[3]), 1.0)
    summary = summarize(*(epoch_sums[4 + k * classes:4 + (k + 1) * classes].long().numpy() for k in range(3)),
                        absent=absent)
    if main_process:
        logger.info(train_result_line(epoch + 1, cfg.epochs, summary))
    return {
        "main_loss": float(epoch_sums[0]) / samples,
        "aux_loss": float(epoch_sums[1]) / samples,
        "loss": float(epoch_sums[2]) / samples,
        "lr": lr,
        "train_mIoU": summary["mIoU"],
        "train_mAcc": summary["mAcc"],
        "train_aAcc": summary["aAcc"],
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    ignore_label: int,
    device: torch.device,
    absent: str = DEFAULT_ABSENT,
    print_freq: int = 10,
) -> dict[str, float]:
    """Whole-crop validation: argmax of the logits resized to the label, areas summed over processes.

    Args:
        model: the bare model (not DDP-wrapped, so uneven shards cannot stall a collective).
        loader: this process's shard of (images (N, 3, H, W), labels int64 (N, H, W)).
        absent: "zero" (the original's averaging over all classes) or "exclude".
        print_freq: log the original's `Test: [i/N] ...` line every this many batches (this
            process's shard: a per-batch collective would stall on uneven shards).
    Returns:
        {"mIoU", "mAcc", "aAcc"} in [0, 1] over the whole validation set, and "val_loss": the
        cross-entropy (ignoring `ignore_label`) averaged over images, as the original's. The
        original's `Val result` / `Class_i Result` lines (every class) are logged on the main process.
    """
    from training.metrics import intersection_and_union_torch, summarize

    main_process = du.is_main_process()
    logger = get_logger() if main_process else None
    if logger:
        logger.info(EVALUATION_START)
    was_training = model.training
    model.eval()
    areas = torch.zeros(3, num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # loss x images, images
    data_time, batch_time, loss_meter = RunningAverage(), RunningAverage(), RunningAverage()
    end = time.perf_counter()
    for i, (images, target) in enumerate(tqdm(loader, desc="validate", disable=not main_process, file=sys.stderr)):
        data_time.update(time.perf_counter() - end)
        images, target = images.to(device), target.to(device)
        logits = model(images)
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=True)
        loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_label)
        pred = logits.argmax(1)
        batch_areas = torch.stack(intersection_and_union_torch(pred, target, num_classes, ignore_label))
        areas += batch_areas
        n = images.size(0)
        loss_sum += torch.stack([loss.double() * n, loss.new_tensor(float(n), dtype=torch.float64)])
        loss_meter.update(float(loss), n)
        batch_time.update(time.perf_counter() - end)
        end = time.perf_counter()
        if logger and (i + 1) % max(1, print_freq) == 0:
            accuracy = float(batch_areas[0].sum()) / (float(batch_areas[2].sum()) + 1e-10)
            logger.info(val_batch_line(i + 1, len(loader), data=(data_time.val, data_time.avg),
                                       batch=(batch_time.val, batch_time.avg),
                                       loss=(loss_meter.val, loss_meter.avg), accuracy=accuracy))
    du.all_reduce_sum(areas)
    du.all_reduce_sum(loss_sum)
    model.train(was_training)
    summary = summarize(*areas.cpu().numpy(), absent=absent)
    val_loss = float(loss_sum[0] / loss_sum[1]) if float(loss_sum[1]) else math.nan
    if logger:
        for line in val_result_lines(summary):
            logger.info(line)
        logger.info(EVALUATION_END)
    return {"mIoU": summary["mIoU"], "mAcc": summary["mAcc"], "aAcc": summary["aAcc"], "val_loss": val_loss}


# --------------------------------------------------------------------------------------------
# Set-up pieces used by main_worker
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int | None, rank: int) -> None:
    """Seed Python, numpy and torch (seed + rank) and ask for deterministic kernels; None does nothing."""
    if seed is None:
        return
    random.seed(seed + rank)
    np.random.seed(seed + rank)  # noqa: NPY002 - the transforms draw from the global generators
    torch.manual_seed(seed + rank)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def _config_dict(cfg: Config) -> dict[str, Any]:
    """The config as a plain dict of plain values (for checkpoints and weights_only loading)."""
    raw = cfg.to_dict()

    def plain(value: Any) -> Any:
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return str(value)

    return {str(k): plain(v) for k, v in raw.items()}


def check_config(cfg: Config) -> None:
    """Reject option combinations the loop cannot run, naming the key (ValueError)."""
    for key in ("train_list", "data_root", "save_path"):
        if not cfg[key]:
            raise ValueError(f"config key {key} must be set for training")
    for key in ("train_h", "train_w"):
        if (cfg[key] - 1) % 8 != 0:
            raise ValueError(f"config key {key}={cfg[key]} must be 8k+1 (e.g. {(cfg[key] - 1) // 8 * 8 + 1})")
    if cfg.epochs <= 0 or cfg.batch_size <= 0 or cfg.base_lr <= 0:
        raise ValueError("config keys epochs, batch_size and base_lr must be positive")
    if cfg.evaluate and not cfg.val_list:
        raise ValueError("config key evaluate is True but val_list is not set")
    if cfg.save_freq <= 0:
        raise ValueError(f"config key save_freq must be positive, got {cfg.save_freq}")
    resolve_precision(cfg)  # opt_level / loss_scale the apex mapping understands
    if not (cfg.weight or cfg.resume):
        from training.models import backbone_weights_path

        backbone_weights_path(cfg)  # the ImageNet file must be there before any process starts


def _build_model(cfg: Config) -> nn.Module:
    from training.models import backbone_weights_path, build_model, load_backbone_weights

    model = build_model(cfg, aux=True, backbone_weights=False)
    if cfg.label_scale == 8:
        # 1/8 label guidance (the original FAQ's faster option): keep the logits at stride 8 while
        # training, and subsample the labels to them; the saved config keeps its zoom_factor.
        model.zoom_factor = 1
    if cfg.weight:
        from training.models import load_checkpoint

        load_checkpoint(model, cfg.weight)
        _log(f"=> loaded weight '{cfg.weight}'")
    elif cfg.resume:
        pass  # the checkpoint replaces every weight: the ImageNet file is neither needed nor read
    else:
        path = backbone_weights_path(cfg)  # the original's initmodel/ file unless the config says otherwise
        if path:
            keys = load_backbone_weights(model, path)
            _log(f"=> loaded ImageNet backbone weights '{path}' ({len(keys)} tensors)")
        else:
            _log("=> no ImageNet backbone weights (pretrained_backbone none): training from scratch")
    return model


def _data_loaders(cfg: Config, state: du.DistributedState, sampler_seed: int) -> tuple[DataLoader, DataLoader | None]:
    from training.data.dataset import SegmentationDataset
    from training.data.transforms import train_transform, val_transform

    label_mapping = dataset_label_mapping(cfg.dataset, cfg.ignore_label)
    train_data = SegmentationDataset(
        "train", cfg.data_root, cfg.train_list, train_transform(cfg), label_mapping, cfg.ignore_label
    )
    per_process = cfg.batch_size // state.world_size
    if per_process < 1:
        raise ValueError(f"config key batch_size={cfg.batch_size} is smaller than the {state.world_size} processes")
    workers = cfg.workers // state.local_world_size
    sampler = DistributedSampler(
        train_data, num_replicas=state.world_size, rank=state.rank, shuffle=True, seed=sampler_seed
    )
    train_loader = DataLoader(
        train_data,
        batch_size=per_process,
        sampler=sampler,
        num_workers=workers,
        pin_memory=state.device.type == "cuda",
        drop_last=True,
    )
    if len(train_loader) == 0:
        raise ValueError(
            f"{cfg.train_list}: {len(train_data)} training samples give no full batch of {per_process} per process"
        )
    val_loader = None
    if cfg.evaluate:
        val_data = SegmentationDataset(
            "val", cfg.data_root, cfg.val_list, val_transform(cfg), label_mapping, cfg.ignore_label
        )
        # A strided shard without padding: every image is scored exactly once over all processes.
        shard = Subset(val_data, range(state.rank, len(val_data), state.world_size))
        val_batch = max(1, cfg.batch_size_val // state.world_size)
        val_loader = DataLoader(shard, batch_size=val_batch, shuffle=False, num_workers=workers)
    return train_loader, val_loader


def _autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    if precision.note:
        _note(precision.note)
    if not precision.amp:
        return None
    if device.type != "cuda":
        _note(f"amp={precision.amp} only applies on CUDA; training in float32 on the CPU")
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision.amp]


def _open_writer(save_path: Path):
    """A TensorBoard SummaryWriter in save_path on the main process (None elsewhere or if unavailable)."""
    if not du.is_main_process():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is in the train extra, but training works without it
        _note("tensorboard is not installed: no event files")
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SummaryWriter(log_dir=str(save_path))


# The original's per-epoch TensorBoard tags -> the metrics key they show. Its `loss_train` is
# the epoch's mean MAIN loss (without the aux term), as it logged it.
ORIGINAL_EPOCH_TAGS = {
    "loss_train": "main_loss", "mIoU_train": "train_mIoU", "mAcc_train": "train_mAcc", "allAcc_train": "train_aAcc",
    "loss_val": "val_loss", "mIoU_val": "mIoU", "mAcc_val": "mAcc", "allAcc_val": "aAcc",
}  # fmt: skip
EPOCH_KEYS = ("loss", "main_loss", "aux_loss", "lr", "train_mIoU", "train_mAcc", "train_aAcc",
              "val_loss", "mIoU", "mAcc", "aAcc")


def _write_epoch_scalars(writer: Any, metrics: dict[str, Any], epoch: int) -> None:
    """The original's per-epoch tags, and sceneparse's `epoch/*` beside them."""
    def finite(key: str) -> bool:
        return key in metrics and not math.isnan(metrics[key])

    for tag, key in ORIGINAL_EPOCH_TAGS.items():
        if finite(key):
            writer.add_scalar(tag, metrics[key], epoch)
    for key in EPOCH_KEYS:
        if finite(key):
            writer.add_scalar(f"epoch/{key}", metrics[key], epoch)
    writer.flush()


def _link_or_copy(source: Path, target: Path) -> None:
    """Make `target` hold the same bytes as `source`, atomically (hard link, else a copy)."""
    with atomic_path(target, prefix=TEMP_PREFIX, suffix="") as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            import shutil

            shutil.copyfile(source, tmp)


def _save_checkpoints(
    save_path: Path, payload: dict[str, Any], epoch: int, cfg: Config, final: bool
) -> Path:
    """Write last.pth (every epoch), train_epoch_N.pth (every save_freq) and final.pth (at the end)."""
    last = atomic_save(payload, save_path / LAST_CHECKPOINT)
    if epoch % cfg.save_freq == 0 or final:
        _link_or_copy(last, epoch_checkpoint_path(save_path, epoch))
        prune_epoch_checkpoints(save_path, cfg.keep_last)
    if final:
        _link_or_copy(last, save_path / FINAL_CHECKPOINT)
    return last


def _write_curves(history: list[dict[str, Any]], save_path: Path) -> None:
    from training.curves import plot_training_curves

    try:
        plot_training_curves(history, save_path / CURVES_FILE)
    except Exception as exc:  # a plotting problem must never cost a training run
        _note(f"could not write the training-curve PNG ({exc.__class__.__name__}: {exc})")


# --------------------------------------------------------------------------------------------
# The worker: everything one process does
# --------------------------------------------------------------------------------------------


def main_worker(index: int | None, cfg: Config, nprocs: int = 1, absent: str = DEFAULT_ABSENT) -> dict[str, Any]:
    """Train in this process (index: spawned worker number, None when not spawned).

    `absent` is validation's absent-class policy ("zero" as the original, or "exclude").

    Returns:
        {"history": per-epoch dicts, "checkpoint": path of final.pth, "metrics": last epoch's dict}
        (meaningful on the main process).
    """
    gpus = list(cfg.train_gpu or []) if torch.cuda.is_available() else []
    state = du.init_distributed_mode(
        gpus,
        dist_url=cfg.dist_url,
        dist_backend=cfg.dist_backend,
        spawn_rank=index,
        spawn_world_size=nprocs if index is not None else None,
    )
    # Seeding switches on deterministic kernels process-wide; put the flags back afterwards so a
    # library caller (the retraining pipeline, tests) is left as it was.
    saved_flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    try:
        return _train(cfg, state, absent)
    finally:
        torch.use_deterministic_algorithms(saved_flags[0], warn_only=saved_flags[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved_flags[2:]
        du.cleanup()


def _train(cfg: Config, state: du.DistributedState, absent: str = DEFAULT_ABSENT) -> dict[str, Any]:
    device = state.device
    seed_everything(cfg.manual_seed, state.rank)
    save_path = Path(cfg.save_path)
    if state.is_main:
        save_path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(save_path)

    # The model: built, optionally initialised from `weight`, BN converted, then wrapped in DDP.
    model = _build_model(cfg)
    if cfg.frozen_bn:
        freeze_batchnorm(model)
    elif cfg.sync_bn and state.distributed:
        model = convert_sync_batchnorm(model, device)
    model.to(device)
    channels_last = bool(cfg.channels_last) and device.type == "cuda"
    if cfg.channels_last and not channels_last:
        _note("channels_last only applies on CUDA; ignored on the CPU")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model_without_ddp = model
    optimizer = build_optimizer(model_without_ddp, cfg.base_lr, cfg.momentum, cfg.weight_decay)
    precision = resolve_precision(cfg)  # `amp`, or the original's apex keys mapped onto native AMP
    autocast_dtype = _autocast_dtype(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16, **precision.scaler_kwargs)
    if state.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    criterion = build_criterion(cfg)

    # Resume: weights, optimizer, epoch/iteration, history and RNG streams.
    start_epoch, history, checkpoint = int(cfg.start_epoch or 0), [], None
    sampler_seed = cfg.manual_seed if cfg.manual_seed is not None else du.all_gather_objects(random.randrange(2**31))[0]
    if cfg.resume:
        checkpoint = load_training_checkpoint(cfg.resume)
        model_without_ddp.load_state_dict(from_original_layout(checkpoint["state_dict"]))
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = int(checkpoint["epoch"])
        history = list(checkpoint.get("history") or [])
        sampler_seed = int(checkpoint.get("sampler_seed", sampler_seed))
        _note(f"resuming from {cfg.resume} after epoch {start_epoch} (iteration {checkpoint.get('iteration')})")

    train_loader, val_loader = _data_loaders(cfg, state, sampler_seed)
    iters_per_epoch = len(train_loader)
    max_iter = cfg.epochs * iters_per_epoch
    if checkpoint is not None:
        if checkpoint.get("iteration") not in (None, start_epoch * iters_per_epoch):
            _note(
                f"checkpoint iteration {checkpoint['iteration']} != {start_epoch} epochs x {iters_per_epoch}: "
                "batch size or process count changed; the poly schedule follows the new epoch length"
            )
        rng = checkpoint.get("rng") or []
        if len(rng) == state.world_size:
            restore_rng_state(rng[state.rank])
        elif rng:
            _note(f"checkpoint has RNG states of {len(rng)} processes, this run has {state.world_size}: reseeding")
    if start_epoch >= cfg.epochs:
        _note(f"start epoch {start_epoch} >= epochs {cfg.epochs}: nothing to train")
    if start_epoch < cfg.epochs:  # the rate of the next step, so a resumed optimizer is in place
        set_learning_rate(optimizer, poly_learning_rate(cfg.base_lr, start_epoch * iters_per_epoch, max_iter, cfg.power))

    writer = _open_writer(save_path)
    config_dict = _config_dict(cfg)
    metrics: dict[str, Any] = history[-1] if history else {}
    last_path = save_path / LAST_CHECKPOINT
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        train_loader.sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        metrics = train_one_epoch(
            model,
            criterion,
            optimizer,
            train_loader,
            epoch,
            cfg,
            device=device,
            max_iter=max_iter,
            scaler=scaler,
            autocast_dtype=autocast_dtype,
            channels_last=channels_last,
            writer=writer,
            absent=absent,
        )
        metrics["epoch"] = epoch + 1
        if val_loader is not None:
            metrics.update(evaluate(model_without_ddp, val_loader, cfg.classes, cfg.ignore_label, device, absent,
                                    print_freq=cfg.print_freq))
        metrics["seconds"] = time.perf_counter() - epoch_start
        history.append(metrics)
        if writer is not None:
            _write_epoch_scalars(writer, metrics, epoch + 1)
        if du.is_main_process():
            summary = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("loss", "mIoU", "mAcc", "aAcc") if k in metrics)
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: {summary}", file=sys.stderr)

        rng = du.all_gather_objects(capture_rng_state())  # collective: every process takes part
        payload = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch + 1,
            "iteration": (epoch + 1) * iters_per_epoch,
            "state_dict": to_original_layout(model_without_ddp.state_dict()),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "config": config_dict,
            "metrics": dict(metrics),
            "history": history,
            "rng": rng,
            "sampler_seed": int(sampler_seed),
            "world_size": state.world_size,
        }
        final = epoch + 1 == cfg.epochs
        saved = du.save_on_master(_save_checkpoints, save_path, payload, epoch + 1, cfg, final)
        if saved is not None:
            last_path = saved
            _write_curves(history, save_path)
        du.barrier()  # nobody races ahead into the next epoch's collectives while rank 0 writes

    if writer is not None:
        writer.close()
    if du.is_main_process() and history:
        tqdm.write(
            f"trained {cfg.epochs - start_epoch} epochs in {time.perf_counter() - started:.1f} s; "
            f"checkpoints in {save_path}",
            file=sys.stderr,
        )
    final_path = save_path / FINAL_CHECKPOINT
    return {"history": history, "metrics": metrics, "checkpoint": str(final_path if final_path.exists() else last_path)}


# --------------------------------------------------------------------------------------------
# Launching and the command line
# --------------------------------------------------------------------------------------------


def _spawned_worker(index: int, config_values: dict[str, Any], nprocs: int, results_path: str, absent: str) -> None:
    from training.config import config_from_mapping

    torch.set_num_threads(max(1, torch.get_num_threads() // nprocs))
    result = main_worker(index, config_from_mapping(config_values), nprocs, absent)
    if index == 0:
        torch.save(result, results_path)


def _spawn_config(cfg: Config, nprocs: int) -> Any:
    """The config the spawned workers get: as the original, they meet on a free local port.

    A fixed `dist_url` (the configs' tcp://127.0.0.1:6789) would make two runs on one machine
    collide; the original picked a free port whenever it spawned. `env://` is used as written
    (MASTER_ADDR/MASTER_PORT from the environment); runs over several machines use torchrun.
    """
    if cfg.dist_url == "env://":
        return cfg
    url = f"tcp://127.0.0.1:{du.find_free_port()}"
    get_logger().info(f"=> spawning {nprocs} processes; rendezvous on {url} (a free port, as the original; "
                      f"dist_url {cfg.dist_url} is not used on one machine)")
    return cfg.merged({"dist_url": url})


def run_training(cfg: Config, cpu_processes: int = 1, absent: str = DEFAULT_ABSENT) -> dict[str, Any]:
    """Train from a loaded config in this process, in spawned workers, or as one torchrun worker.

    Args:
        cfg: a `training.config.Config`, a flat mapping or a YAML path (`training.config.as_config`;
            then checked with `check_config`).
        cpu_processes: on the CPU, how many gloo processes to spawn (1: train in this process).
        absent: validation's absent-class policy, "zero" (the original's) or "exclude".
    Returns:
        The main process's `main_worker` result: {"history", "metrics", "checkpoint"}.
    """
    cfg = as_config(cfg)
    check_config(cfg)
    if absent not in ABSENT_POLICIES:
        raise ValueError(f"absent must be one of {ABSENT_POLICIES}, got {absent!r}")
    gpus = list(cfg.train_gpu or [])
    if gpus and not torch.cuda.is_available():
        print(f"note: train_gpu {gpus} but CUDA is not available: training on the CPU", file=sys.stderr)
        gpus = []
    if du.launched_by_torchrun():
        return main_worker(None, cfg, absent=absent)
    if cfg.world_size > 1:
        # The original's world_size counts nodes; spawned workers here only ever span this machine.
        raise ValueError(
            f"config key world_size={cfg.world_size} asks for several nodes: launch with torchrun on each node "
            "(torchrun --nnodes N --node_rank R --nproc_per_node G --master_addr HOST -m training.train ...), "
            "see docs/training.md")
    nprocs = len(gpus) if gpus and cfg.multiprocessing_distributed else (1 if gpus else cpu_processes)
    if nprocs <= 1:
        return main_worker(None, cfg, absent=absent)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sceneparse-train-") as tmp:
        results_path = os.path.join(tmp, "result.pt")
        # The config travels as a plain dict: workers rebuild (and re-validate) their Config.
        du.spawn_workers(_spawned_worker, nprocs, (_spawn_config(cfg, nprocs).to_dict(), nprocs, results_path, absent))
        return torch.load(results_path, weights_only=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sceneparse train",
        description="Train PSPNet/PSANet from a YAML config (original format); KEY VALUE pairs override it.",
    )
    parser.add_argument("--config", required=True, help="YAML config, e.g. training/config/ade20k/ade20k_pspnet50.yaml")
    parser.add_argument(
        "--cpu-processes",
        type=int,
        default=1,
        help="on the CPU, spawn this many gloo processes (DDP + CPU SyncBN); GPUs come from train_gpu",
    )
    parser.add_argument(
        "--absent",
        choices=ABSENT_POLICIES,
        default=DEFAULT_ABSENT,
        help="validation (evaluate True): classes absent from prediction and label count as 0 in the means "
        "like the original (zero, default) or are left out (exclude)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="overrides: KEY VALUE ... (e.g. base_lr 0.005)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: returns 0 on success, 1 when training fails, 2 for a bad config."""
    args = parse_args(argv)
    try:
        from training.config import load_config

        cfg = load_config(args.config, list(args.opts or []))
        check_config(cfg)
    except (ValueError, KeyError, OSError) as exc:
        print(f"sceneparse train: {exc}", file=sys.stderr)
        return 2
    if args.cpu_processes < 1:
        print("sceneparse train: --cpu-processes must be at least 1", file=sys.stderr)
        return 2
    try:
        run_training(cfg, cpu_processes=args.cpu_processes, absent=args.absent)
    except KeyboardInterrupt:
        print("sceneparse train: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("SCENEPARSE_DEBUG"):
            raise
        # Spawned workers report their traceback as text; its last line is the error itself.
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
        print(f"sceneparse train: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # torchrun ... -m training.train --config CFG
    sys.exit(main())
