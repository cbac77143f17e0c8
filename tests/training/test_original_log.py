"""The original's log lines and averaging: formats on hand-made metrics, and in-training validation.

Scripts written for the original project grep its logs for `Eval result`, `Class_i result`,
`Val result`, `Train result at epoch` and the per-iteration `Epoch: [e/E][i/N] ...` line; these
tests pin the wordings and number formats, and check that validation during training averages
over all classes (an absent one as 0) unless `exclude` is asked for.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from training.metrics import summarize
from training.original_log import (
    LOG_FORMAT,
    eval_result_lines,
    get_logger,
    iteration_line,
    remain_time,
    train_result_line,
    val_result_lines,
)
from training.train import evaluate

# 3 classes; class 2 is in neither prediction nor target.
METRICS = summarize([3, 1, 0], [4, 2, 0], [3, 2, 0], ["wall", "floor", "sky"])


def test_eval_and_val_lines_are_the_originals_wording():
    assert METRICS["mIoU"] == pytest.approx((0.75 + 0.5 + 0) / 3)
    assert eval_result_lines(METRICS) == [
        "Eval result: mIoU/mAcc/allAcc 0.4167/0.5000/0.8000.",
        "Class_0 result: iou/accuracy 0.7500/1.0000, name: wall.",
        "Class_1 result: iou/accuracy 0.5000/0.5000, name: floor.",
        "Class_2 result: iou/accuracy 0.0000/0.0000, name: sky.",
    ]
    assert val_result_lines(METRICS) == [
        "Val result: mIoU/mAcc/allAcc 0.4167/0.5000/0.8000.",
        "Class_0 Result: iou/accuracy 0.7500/1.0000.",
        "Class_1 Result: iou/accuracy 0.5000/0.5000.",
        "Class_2 Result: iou/accuracy 0.0000/0.0000.",
    ]
    assert train_result_line(3, 100, METRICS) == "Train result at epoch [3/100]: mIoU/mAcc/allAcc 0.4167/0.5000/0.8000."


def test_iteration_line_and_remaining_time():
    line = iteration_line(2, 100, 10, 1263, data=(0.0123, 0.04567), batch=(1.5, 1.25), remain=3 * 3600 + 62.9,
                          main_loss=1.23456, aux_loss=0.5, loss=1.43456, accuracy=0.61234)
    assert line == ("Epoch: [2/100][10/1263] Data 0.012 (0.046) Batch 1.500 (1.250) Remain 03:01:02 "
                    "MainLoss 1.2346 AuxLoss 0.5000 Loss 1.4346 Accuracy 0.6123.")
    assert remain_time(100 * 3600) == "100:00:00" and remain_time(float("nan")) == "00:00:00"


def test_logger_uses_the_originals_format(capsys):
    assert LOG_FORMAT == "[%(asctime)s %(levelname)s %(filename)s line %(lineno)d %(process)d] %(message)s"
    logger = get_logger()
    handlers = list(logger.handlers)  # pytest's caplog may have attached its own capture handlers
    assert get_logger() is logger and logger.handlers == handlers  # asking twice adds no second handler
    assert sum(type(h).__name__ == "_TqdmHandler" for h in logger.handlers) == 1
    logger.info("Val result: mIoU/mAcc/allAcc 0.1000/0.2000/0.3000.")
    err = capsys.readouterr().err
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO test_original_log\.py line \d+ \d+\] "
                        r"Val result: mIoU/mAcc/allAcc 0\.1000/0\.2000/0\.3000\.\n", err), err


class FixedLogits(nn.Module):
    """A model whose logits are given: validation's arithmetic on known predictions."""

    def __init__(self, prediction: torch.Tensor, classes: int):
        super().__init__()
        self.logits = nn.functional.one_hot(prediction, classes).permute(0, 3, 1, 2).float()

    def forward(self, images):
        return self.logits[: images.shape[0]]


def test_validation_averages_over_all_classes_and_logs_the_val_lines(capsys):
    # 4 classes: class 3 absent from both; class 2 predicted once but never in the target.
    target = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 255]]])
    prediction = torch.tensor([[[0, 1, 1, 1], [0, 1, 2, 2]]])
    loader = [(torch.zeros(1, 3, 2, 4), target)]
    model = FixedLogits(prediction, 4)
    # by hand: class 0 I 2 U 3 T 3; class 1 I 3 U 5 T 4; class 2 I 0 U 1 T 0; class 3 nothing
    result = evaluate(model, loader, 4, 255, torch.device("cpu"))
    assert result["mIoU"] == pytest.approx((2 / 3 + 3 / 5 + 0 + 0) / 4)
    assert result["mAcc"] == pytest.approx((2 / 3 + 3 / 4 + 0 + 0) / 4)
    assert result["aAcc"] == pytest.approx(5 / 7)
    err = capsys.readouterr().err
    assert f"] Val result: mIoU/mAcc/allAcc {result['mIoU']:.4f}/{result['mAcc']:.4f}/{result['aAcc']:.4f}.\n" in err
    assert "] Class_3 Result: iou/accuracy 0.0000/0.0000.\n" in err
    excluded = evaluate(model, loader, 4, 255, torch.device("cpu"), absent="exclude")
    assert excluded["mIoU"] == pytest.approx((2 / 3 + 3 / 5 + 0) / 3)
    assert excluded["mAcc"] == pytest.approx((2 / 3 + 3 / 4) / 2)


def test_a_training_run_logs_and_writes_what_the_original_did(synthetic_dataset, tmp_path, capsys):
    """2 iterations + validation: the per-iteration and per-epoch lines, and the original's
    TensorBoard tags beside sceneparse's, agree with the checkpoint's figures."""
    from tests.training.test_train import _overrides, _tensorboard_scalars
    from training.config import config_path
    from training.train import main

    overrides = _overrides(synthetic_dataset, tmp_path, samples=4, evaluate=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["--config", str(config_path("synthetic/synthetic_pspnet18")), *overrides]) == 0
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    metrics = torch.load(tmp_path / "run" / "final.pth", weights_only=True)["metrics"]

    number = r"(\d+\.\d{4})"
    lines = re.findall(r"\] Epoch: \[1/1\]\[(\d)/2\] Data \d+\.\d{3} \(\d+\.\d{3}\) Batch \d+\.\d{3} \(\d+\.\d{3}\) "
                       rf"Remain \d\d:\d\d:\d\d MainLoss {number} AuxLoss {number} Loss {number} Accuracy {number}\.\n",
                       err)
    assert [line[0] for line in lines] == ["1", "2"]
    for _, main_loss, aux_loss, loss, accuracy in lines:
        assert float(loss) == pytest.approx(float(main_loss) + 0.4 * float(aux_loss), abs=2e-4)
        assert 0.0 <= float(accuracy) <= 1.0
    assert (f"] Train result at epoch [1/1]: mIoU/mAcc/allAcc {metrics['train_mIoU']:.4f}/"
            f"{metrics['train_mAcc']:.4f}/{metrics['train_aAcc']:.4f}.\n") in err
    assert "] >>>>>>>>>>>>>>>> Start Evaluation >>>>>>>>>>>>>>>>\n" in err
    assert f"] Val result: mIoU/mAcc/allAcc {metrics['mIoU']:.4f}/{metrics['mAcc']:.4f}/{metrics['aAcc']:.4f}.\n" in err
    assert err.count(" Result: iou/accuracy ") == 6 and "] <<<<<<<<<<<<<<<<< End Evaluation <<<<<<<<<<<<<<<<<\n" in err
    assert re.search(r"\] Test: \[1/\d+\] Data .* Loss \d+\.\d{4} \(\d+\.\d{4}\) Accuracy", err)
    assert metrics["val_loss"] > 0 and 0.0 <= metrics["train_mIoU"] <= 1.0

    scalars = _tensorboard_scalars(tmp_path / "run")
    for tag in ("loss_train_batch", "mIoU_train_batch", "mAcc_train_batch", "allAcc_train_batch"):
        assert sorted(scalars[tag]) == [1, 2], tag
    assert scalars["loss_train_batch"][2] == pytest.approx(float(lines[1][1]), abs=1e-4)  # the MAIN loss
    assert scalars["allAcc_train_batch"][2] == pytest.approx(float(lines[1][4]), abs=1e-4)
    epoch_tags = {"loss_train": "main_loss", "mIoU_train": "train_mIoU", "mAcc_train": "train_mAcc",
                  "allAcc_train": "train_aAcc", "loss_val": "val_loss", "mIoU_val": "mIoU", "mAcc_val": "mAcc",
                  "allAcc_val": "aAcc"}
    for tag, key in epoch_tags.items():
        assert scalars[tag] == {1: pytest.approx(metrics[key], abs=1e-6)}, tag
    assert {"train/loss", "train/lr", "epoch/loss", "epoch/mIoU", "epoch/val_loss"} <= set(scalars)  # kept
