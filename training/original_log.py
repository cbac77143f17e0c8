"""The original project's log lines, so that scripts which parse its logs keep working.

The original logged through one `logging` logger on stderr with the format `LOG_FORMAT`, and
printed results in fixed wordings: `Eval result: ...` / `Class_{i} result: ...` (tool/test.py),
`Val result: ...` / `Class_{i} Result: ...` (validation during training, capital R),
`Train result at epoch [e/E]: ...` and the per-iteration `Epoch: [e/E][i/N] Data ...` line
(tool/train.py). The functions below give those strings; `get_logger` writes them the same way,
through tqdm so that progress bars on the same stream are not torn.
"""

from __future__ import annotations

import logging
import math
import sys

__all__ = ["EVALUATION_END", "EVALUATION_START", "LOG_FORMAT", "RunningAverage", "eval_result_lines",
           "get_logger", "iteration_line", "remain_time", "train_result_line", "val_batch_line", "val_result_lines"]

LOG_FORMAT = "[%(asctime)s %(levelname)s %(filename)s line %(lineno)d %(process)d] %(message)s"
LOGGER_NAME = "sceneparse.main"
# The lines that frame a validation pass in the original's training log.
EVALUATION_START = ">>>>>>>>>>>>>>>> Start Evaluation >>>>>>>>>>>>>>>>"
EVALUATION_END = "<<<<<<<<<<<<<<<<< End Evaluation <<<<<<<<<<<<<<<<<"


class RunningAverage:
    """The last value and the running mean (weighted by `n`), as the log lines show them."""

    def __init__(self) -> None:
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.val = float(value)
        self.sum += float(value) * n
        self.count += n
        self.avg = self.sum / self.count


class _TqdmHandler(logging.StreamHandler):
    """A stderr handler that prints through `tqdm.write`, above any live progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never take the run down
            self.handleError(record)


def get_logger() -> logging.Logger:
    """The logger with the original's format on stderr (one handler, however often called)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the root logger (if configured) would print every line twice
    return logger


def _summary(metrics: dict) -> str:
    return f"mIoU/mAcc/allAcc {metrics['mIoU']:.4f}/{metrics['mAcc']:.4f}/{metrics['aAcc']:.4f}."


def eval_result_lines(metrics: dict) -> list[str]:
    """`sceneparse test`: the summary and one line per class, with the class name."""
    lines = [f"Eval result: {_summary(metrics)}"]
    lines += [f"Class_{row['id']} result: iou/accuracy {row['iou']:.4f}/{row['accuracy']:.4f}, name: {row['name']}."
              for row in metrics["per_class"]]
    return lines


def val_result_lines(metrics: dict) -> list[str]:
    """Validation during training: the summary and one line per class (no names, capital R)."""
    lines = [f"Val result: {_summary(metrics)}"]
    lines += [f"Class_{row['id']} Result: iou/accuracy {row['iou']:.4f}/{row['accuracy']:.4f}."
              for row in metrics["per_class"]]
    return lines


def train_result_line(epoch: int, epochs: int, metrics: dict) -> str:
    """The end of a training epoch: mIoU/mAcc/allAcc of the epoch's training batches."""
    return f"Train result at epoch [{epoch}/{epochs}]: {_summary(metrics)}"


def remain_time(seconds: float) -> str:
    """HH:MM:SS of the estimated time left (hours may pass 99)."""
    seconds = max(0.0, seconds) if math.isfinite(seconds) else 0.0
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours):02d}:{int(minutes):02d}:{int(secs):02d}"


def iteration_line(epoch: int, epochs: int, step: int, steps: int, *, data: tuple[float, float],
                   batch: tuple[float, float], remain: float, main_loss: float, aux_loss: float,
                   loss: float, accuracy: float) -> str:
    """Every `print_freq` iterations: (last, mean) data and batch seconds, time left, the last
    batch's losses and pixel accuracy."""
    return (f"Epoch: [{epoch}/{epochs}][{step}/{steps}] "
            f"Data {data[0]:.3f} ({data[1]:.3f}) "
            f"Batch {batch[0]:.3f} ({batch[1]:.3f}) "
            f"Remain {remain_time(remain)} "
            f"MainLoss {main_loss:.4f} "
            f"AuxLoss {aux_loss:.4f} "
            f"Loss {loss:.4f} "
            f"Accuracy {accuracy:.4f}.")


def val_batch_line(step: int, steps: int, *, data: tuple[float, float], batch: tuple[float, float],
                   loss: tuple[float, float], accuracy: float) -> str:
    """Every `print_freq` validation batches: seconds, (last, mean) loss and the pixel accuracy."""
    return (f"Test: [{step}/{steps}] "
            f"Data {data[0]:.3f} ({data[1]:.3f}) "
            f"Batch {batch[0]:.3f} ({batch[1]:.3f}) "
            f"Loss {loss[0]:.4f} ({loss[1]:.4f}) "
            f"Accuracy {accuracy:.4f}.")
