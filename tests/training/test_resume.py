"""Resume: a training process killed with SIGKILL mid-epoch continues exactly where it stood.

A run is started as a real subprocess and killed (SIGKILL, no chance to clean up) once its first
checkpoint is on disk and the second epoch is under way. Resuming from `last.pth` must finish
with a valid model, and with the same weights, learning-rate position and history as the same
run left uninterrupted: the same poly-LR position, epoch and RNG streams.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from training.checkpoints import load_training_checkpoint
from training.config import config_path, load_config
from training.models import build_model, load_checkpoint
from training.optim import poly_learning_rate
from training.train import main

CONFIG = str(config_path("synthetic/synthetic_pspnet18"))
CROP = 33
EPOCHS = 2
SAMPLES, BATCH = 8, 2  # 4 iterations per epoch
ROOT = Path(__file__).resolve().parents[2]


def _overrides(dataset, tmp_path: Path, save_path: Path) -> list[str]:
    train_list = tmp_path / "train_subset.txt"
    if not train_list.exists():
        train_list.write_text("\n".join(dataset.train_list.read_text().splitlines()[:SAMPLES]) + "\n")
    values = {
        "data_root": dataset.root,
        "train_list": train_list,
        "val_list": dataset.val_list,
        "save_path": save_path,
        "train_h": CROP,
        "train_w": CROP,
        "batch_size": BATCH,
        "epochs": EPOCHS,
        "workers": 0,
        "manual_seed": 3,
        "evaluate": False,
        "keep_last": 5,
    }
    return [str(item) for key, value in values.items() for item in (key, value)]


@pytest.fixture(autouse=True)
def _one_thread():
    # The killed subprocess runs with one thread too: same thread count, same float reductions.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run_and_kill_in_second_epoch(overrides: list[str], save_path: Path) -> None:
    """Start `python -m training.train`, SIGKILL it after an iteration of epoch 2 has run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "training.train", "--config", CONFIG, *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = bytearray()

    def read_stderr() -> None:
        while chunk := process.stderr.read1(4096):
            stderr.extend(chunk)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    # tqdm's bar for epoch 2 shows "1/4" (or more) once an iteration of epoch 2 has finished.
    second_epoch_started = re.compile(rb"epoch 2/2:.*?\| [1-3]/4")
    deadline = time.monotonic() + 120
    try:
        while not second_epoch_started.search(stderr):
            assert process.poll() is None, f"training exited early:\n{stderr.decode(errors='replace')[-2000:]}"
            assert time.monotonic() < deadline, "training did not reach epoch 2 in time"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
        reader.join(timeout=5)
    assert process.returncode == -signal.SIGKILL
    assert (save_path / "train_epoch_1.pth").is_file()
    assert not (save_path / "train_epoch_2.pth").exists(), "the run finished epoch 2 before the kill"
    assert not (save_path / "final.pth").exists()


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(synthetic_dataset, tmp_path):
    killed = tmp_path / "killed"
    _run_and_kill_in_second_epoch(_overrides(synthetic_dataset, tmp_path, killed), killed)

    # The atomic writes leave a complete last.pth from epoch 1, whatever moment the kill hit.
    last = load_training_checkpoint(killed / "last.pth")
    assert last["epoch"] == 1 and last["iteration"] == 4
    # Plant a half-written temporary file like a kill during a save would leave.
    (killed / ".tmp-last.pth.crashed").write_bytes(b"partial")

    resume = [*_overrides(synthetic_dataset, tmp_path, killed), "resume", str(killed / "last.pth")]
    assert main(["--config", CONFIG, *resume]) == 0
    resumed = load_training_checkpoint(killed / "final.pth")
    assert not list(killed.glob(".tmp-*"))

    reference_dir = tmp_path / "uninterrupted"
    assert main(["--config", CONFIG, *_overrides(synthetic_dataset, tmp_path, reference_dir)]) == 0
    reference = load_training_checkpoint(reference_dir / "final.pth")

    # Same position in the schedule: epoch, iteration and the poly rate of the last step.
    assert resumed["epoch"] == reference["epoch"] == EPOCHS
    assert resumed["iteration"] == reference["iteration"] == EPOCHS * SAMPLES // BATCH
    cfg = load_config(CONFIG, resume)
    expected_lr = poly_learning_rate(cfg.base_lr, resumed["iteration"] - 1, resumed["iteration"], cfg.power)
    for got, want in zip(resumed["optimizer"]["param_groups"], reference["optimizer"]["param_groups"], strict=True):
        assert got["lr"] == pytest.approx(want["lr"])
    assert resumed["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected_lr)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    for got, want in zip(resumed["history"], reference["history"], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["lr"] == pytest.approx(want["lr"])

    # Same RNG streams (data order, augmentations, dropout): the same weights at the end.
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    momentum = resumed["optimizer"]["state"]
    assert momentum.keys() == reference["optimizer"]["state"].keys()

    # And the resumed model is a valid model.
    model = build_model(cfg, aux=False)
    load_checkpoint(model, killed / "final.pth")
    logits = model.eval()(torch.randn(2, 3, CROP, CROP))
    assert torch.isfinite(logits).all() and logits.shape == (2, cfg.classes, CROP, CROP)


def test_resume_restores_the_learning_rate_position(synthetic_dataset, tmp_path):
    """A run resumed after its last epoch with more epochs continues the poly schedule from there."""
    first = tmp_path / "first"
    overrides = _overrides(synthetic_dataset, tmp_path, first)
    assert main(["--config", CONFIG, *overrides, "epochs", "1"]) == 0
    # Resuming with epochs 2: iteration 4 of 8; the first resumed step runs at poly(4/8).
    assert main(["--config", CONFIG, *overrides, "resume", str(first / "last.pth"), "print_freq", "1"]) == 0
    checkpoint = load_training_checkpoint(first / "final.pth")
    assert checkpoint["epoch"] == 2 and checkpoint["iteration"] == 8
    assert checkpoint["history"][0]["lr"] == pytest.approx(poly_learning_rate(0.01, 3, 4))
    assert checkpoint["history"][1]["lr"] == pytest.approx(poly_learning_rate(0.01, 7, 8))
    events = _tensorboard_lrs(first)
    assert events[5] == pytest.approx(poly_learning_rate(0.01, 4, 8))  # step 5 = iteration index 4
    assert events[8] == pytest.approx(poly_learning_rate(0.01, 7, 8))


def _tensorboard_lrs(run: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lrs: dict[int, float] = {}
    for path in sorted(run.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        if "train/lr" in accumulator.Tags()["scalars"]:
            lrs.update({event.step: event.value for event in accumulator.Scalars("train/lr")})
    return lrs
