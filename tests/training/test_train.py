"""`sceneparse train` end to end on the synthetic dataset: tiny runs, real checkpoints.

Checks what the rest of the project relies on: the checkpoint's contents and its original
(`module.`-prefixed) layout, the optimizer recipe, the observability files, 2-process CPU DDP
and the one-line CLI errors.
"""

from __future__ import annotations

import math
import re
import socket
from pathlib import Path

import pytest
import torch

from training.checkpoints import from_original_layout
from training.config import config_path, load_config
from training.models import build_model, load_checkpoint
from training.optim import build_optimizer, poly_learning_rate
from training.train import labels_for_logits, main

CONFIG = str(config_path("synthetic/synthetic_pspnet18"))
CROP = 33


def _overrides(dataset, tmp_path: Path, samples: int, **extra) -> list[str]:
    """KEY VALUE pairs for a tiny run on the first `samples` training images."""
    lines = dataset.train_list.read_text().splitlines()[:samples]
    train_list = tmp_path / "train_subset.txt"
    train_list.write_text("\n".join(lines) + "\n")
    values = {
        "data_root": dataset.root,
        "train_list": train_list,
        "val_list": dataset.val_list,
        "save_path": tmp_path / "run",
        "train_h": CROP,
        "train_w": CROP,
        "batch_size": 2,
        "batch_size_val": 4,
        "epochs": 1,
        "workers": 0,
        "manual_seed": 0,
        "print_freq": 1,
        "evaluate": False,
        **extra,
    }
    return [str(item) for key, value in values.items() for item in (key, value)]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_iterations_write_a_complete_checkpoint_in_the_original_layout(synthetic_dataset, tmp_path):
    overrides = _overrides(synthetic_dataset, tmp_path, samples=4, evaluate=True)
    assert main(["--config", CONFIG, *overrides]) == 0
    run = tmp_path / "run"
    for name in ("last.pth", "final.pth", "train_epoch_1.pth", "training_curves.png"):
        assert (run / name).is_file(), name
    assert (run / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scalars = _tensorboard_scalars(run)
    assert {"train/loss", "train/aux_loss", "train/lr", "epoch/mIoU", "epoch/mAcc", "epoch/aAcc"} <= set(scalars)
    assert list(scalars["train/lr"]) == [1, 2] and list(scalars["epoch/mIoU"]) == [1]
    assert not list(run.glob(".tmp-*")), "temporary files left behind"

    checkpoint = torch.load(run / "final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["iteration"] == 2  # 4 images / batch 2
    # The original layout: every key `module.`-prefixed, and the stripped keys are the model's own.
    cfg = load_config(CONFIG, overrides)
    reference = build_model(cfg, aux=True).state_dict()
    state = checkpoint["state_dict"]
    assert all(key.startswith("module.") for key in state)
    stripped = from_original_layout(state)
    assert list(stripped) == list(reference)
    assert all(stripped[k].shape == reference[k].shape for k in reference)
    assert any(not torch.equal(stripped[k], reference[k]) for k in reference if k.endswith("weight"))

    groups = checkpoint["optimizer"]["param_groups"]
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    assert groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    assert groups[0]["momentum"] == 0.9 and groups[0]["weight_decay"] == 1e-4
    # The last step (iteration 1 of 2) ran at poly(1/2).
    assert groups[0]["lr"] == pytest.approx(poly_learning_rate(cfg.base_lr, 1, 2, cfg.power))
    assert checkpoint["config"] == cfg.to_dict()
    metrics = checkpoint["metrics"]
    assert math.isfinite(metrics["loss"]) and metrics["loss"] > 0
    assert 0.0 <= metrics["mIoU"] <= 1.0 and 0.0 <= metrics["aAcc"] <= 1.0
    assert scalars["epoch/mIoU"][1] == pytest.approx(metrics["mIoU"])
    assert len(checkpoint["rng"]) == 1 and checkpoint["rng"][0]["torch"].dtype == torch.uint8

    # The project's own loader reads it, and the model then segments a crop.
    model = build_model(cfg, aux=False)
    load_checkpoint(model, run / "final.pth")
    logits = model.eval()(torch.randn(1, 3, CROP, CROP))
    assert logits.shape == (1, cfg.classes, CROP, CROP) and torch.isfinite(logits).all()


def _tensorboard_scalars(run: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(run.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return scalars


def test_weight_and_resume_need_no_imagenet_backbone_file(synthetic_dataset, tmp_path):
    """The shipped configs name initmodel/resnet*_v2.pth; a checkpoint to start from replaces it."""
    first = _overrides(synthetic_dataset, tmp_path, samples=2)
    assert main(["--config", CONFIG, *first]) == 0
    missing = str(tmp_path / "initmodel" / "resnet18_v2.pth")
    fine_tune = _overrides(synthetic_dataset, tmp_path, samples=2, save_path=tmp_path / "ft",
                           pretrained_backbone=missing, weight=tmp_path / "run" / "final.pth")
    assert main(["--config", CONFIG, *fine_tune]) == 0
    resumed = _overrides(synthetic_dataset, tmp_path, samples=2, epochs=2, pretrained_backbone=missing,
                         resume=tmp_path / "run" / "last.pth")
    assert main(["--config", CONFIG, *resumed]) == 0
    assert torch.load(tmp_path / "run" / "final.pth", weights_only=True)["epoch"] == 2
    # Without a checkpoint the backbone file is read, and its absence is a clear error.
    scratch = _overrides(synthetic_dataset, tmp_path, samples=2, save_path=tmp_path / "scratch",
                         pretrained_backbone=missing)
    assert main(["--config", CONFIG, *scratch]) != 0


def test_several_nodes_outside_torchrun_is_a_clear_error(synthetic_dataset, tmp_path, capsys):
    overrides = _overrides(synthetic_dataset, tmp_path, samples=2, world_size=2)
    assert main(["--config", CONFIG, *overrides]) != 0
    err = capsys.readouterr().err
    assert "world_size=2" in err and "torchrun" in err


def test_label_scale_8_and_frozen_bn(synthetic_dataset, tmp_path):
    overrides = _overrides(synthetic_dataset, tmp_path, samples=2, label_scale=8, frozen_bn=True, keep_last=1)
    assert main(["--config", CONFIG, *overrides]) == 0
    state = torch.load(tmp_path / "run" / "final.pth", weights_only=True)["state_dict"]
    # Frozen BN: statistics and affine parameters stay at their initial values.
    assert torch.equal(state["module.layer1.0.bn1.running_mean"], torch.zeros(64))
    assert torch.equal(state["module.layer1.0.bn1.running_var"], torch.ones(64))
    assert torch.equal(state["module.layer1.0.bn1.weight"], torch.ones(64))
    assert not torch.equal(state["module.layer1.0.conv1.weight"], torch.zeros(1))


def test_two_cpu_processes_train_with_ddp_and_sync_bn(synthetic_dataset, tmp_path, capsys):
    # dist_url names a port another program holds (as a second run with the same config would):
    # spawned workers meet on a free port instead, as the original's, and the log says which.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        overrides = _overrides(synthetic_dataset, tmp_path, samples=4, batch_size=4, sync_bn=True,
                               dist_url=f"tcp://127.0.0.1:{port}")
        assert main(["--config", CONFIG, "--cpu-processes", "2", *overrides]) == 0
    used = re.findall(r"\] => spawning 2 processes; rendezvous on tcp://127\.0\.0\.1:(\d+) ", capsys.readouterr().err)
    assert len(used) == 1 and int(used[0]) != port
    checkpoint = torch.load(tmp_path / "run" / "final.pth", weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    assert checkpoint["iteration"] == 1  # 4 images, 2 per process
    assert all(key.startswith("module.") for key in checkpoint["state_dict"])
    # Ranks are seeded apart (manual_seed + rank), so their augmentation streams differ.
    assert not torch.equal(checkpoint["rng"][0]["torch"], checkpoint["rng"][1]["torch"])


def test_optimizer_groups_follow_the_recipe():
    cfg = load_config(CONFIG)
    model = build_model(cfg, aux=True)
    optimizer = build_optimizer(model, 0.01)
    backbone, head = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].split(".")[0] for p in backbone["params"]} == {f"layer{i}" for i in range(5)}
    assert {names[id(p)].split(".")[0] for p in head["params"]} == {"ppm", "cls", "aux"}
    assert (backbone["lr"], head["lr"]) == (0.01, pytest.approx(0.1))
    assert poly_learning_rate(0.01, 0, 100) == 0.01
    assert poly_learning_rate(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_learning_rate(0.01, 100, 100) == 0.0


def test_labels_are_subsampled_on_the_logit_grid():
    target = torch.arange(17 * 17).view(1, 17, 17)
    small = labels_for_logits(target, (3, 3))
    assert small.tolist() == [[[0, 8, 16], [136, 144, 152], [272, 280, 288]]]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["train_h", "40"], "train_h"),
        (["no_such_key", "1"], "no_such_key"),
        (["train_list", "/nonexistent/train.txt"], "/nonexistent/train.txt"),
    ],
)
def test_bad_input_is_one_line_on_stderr(extra, needle, synthetic_dataset, tmp_path, capsys):
    overrides = _overrides(synthetic_dataset, tmp_path, samples=2) + extra
    assert main(["--config", CONFIG, *overrides]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("sceneparse train: ") and needle in err[-1]
    assert "Traceback" not in "\n".join(err)
