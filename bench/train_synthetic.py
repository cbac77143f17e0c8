"""Train the tiny synthetic config on the CPU and score it on the val split; print a table.

    python bench/train_synthetic.py [--config CFG] [--size HxW] [--data DIR] [--workdir DIR] [--threads N] [KEY VALUE ...]

Steps: write the synthetic dataset (`make-synthetic` with 200 train / 40 val images of
--size, default 192x256, unless --data already holds one), train with
`training.train.run_training` in this process, then score the final checkpoint on the val split
with the original test protocol (`training.evaluate`: whole images with `base_size` set to the
images' long side, sliding window, flip). The done-when target of the training issue is
mIoU >= 0.85 within 5 minutes of training on 2 CPU cores.

Prints the per-epoch log and a summary table: epochs, iterations, training wall time, process
CPU time, mIoU / mAcc / aAcc, and whether the target was met. Wall time on a shared machine is
noisy; CPU time / threads is a lower bound on what an idle machine needs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.config import config_path, load_config  # noqa: E402
from training.data.synthetic import make_synthetic_dataset  # noqa: E402
from training.evaluate import evaluate_dataset  # noqa: E402
from training.train import run_training  # noqa: E402

DEFAULT_CONFIG = "synthetic/synthetic_pspnet18"
TARGET_MIOU, TARGET_SECONDS = 0.85, 300.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(config_path(DEFAULT_CONFIG)))
    parser.add_argument("--size", default="192x256", help="synthetic image size HxW when --data is written")
    parser.add_argument("--data", type=Path, default=None, help="dataset dir (default .cache/bench/synthetic_<size>)")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "bench" / "train_synthetic")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the target is for 2 cores)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    data = (args.data or ROOT / ".cache" / "bench" / f"synthetic_{height}x{width}").resolve()
    if not (data / "train.txt").is_file():
        make_synthetic_dataset(data, train=200, val=40, size=(height, width), progress=False)
    first_val_image = data / (data / "val.txt").read_text().split()[0]
    with Image.open(first_val_image) as image:
        long_side = max(image.size)  # the test protocol scales the long side to base_size
    run_dir = args.workdir.resolve() / "model"
    overrides = [
        "data_root", str(data), "train_list", str(data / "train.txt"), "val_list", str(data / "val.txt"),
        "save_path", str(run_dir), "resume", "None", "weight", "None",
        *list(args.opts or []),
    ]  # fmt: skip
    cfg = load_config(args.config, overrides)

    wall, cpu = time.perf_counter(), time.process_time()
    result = run_training(cfg)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu

    test_cfg = cfg.merged(
        {
            "model_path": result["checkpoint"],
            "test_list": str(data / "val.txt"),
            "split": "val",
            "base_size": long_side,
            "save_folder": str(args.workdir.resolve() / "val"),
            "names_path": str(data / "synthetic_names.txt"),
            "colors_path": str(data / "synthetic_colors.txt"),
            "has_prediction": False,
            "index_start": 0,
            "index_step": 0,
        }
    )
    wall = time.perf_counter()
    scores = evaluate_dataset(test_cfg, progress=False, write_report_files=True)
    eval_wall = time.perf_counter() - wall

    history = result["history"]
    print()
    print("epoch  loss    aux     lr        seconds  val mIoU (center crop)")
    for row in history:
        val = f"{row['mIoU']:.4f}" if "mIoU" in row else "-"
        print(f"{row['epoch']:>5}  {row['loss']:.4f}  {row['aux_loss']:.4f}  {row['lr']:.2e}  {row['seconds']:7.1f}  {val}")
    iterations = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)["iteration"]
    met = scores["mIoU"] >= TARGET_MIOU and train_wall <= TARGET_SECONDS
    print()
    print(
        _table(
            [
                ("config", f"{args.config} {' '.join(args.opts or [])}".strip()),
                ("model", f"{cfg.arch}{cfg.layers}, crop {cfg.train_h}x{cfg.train_w}, batch {cfg.batch_size}, "
                          f"base_lr {cfg.base_lr}, output_stride {cfg.output_stride}"),
                ("data", f"{data} ({len((data / 'train.txt').read_text().splitlines())} train, {scores['images']} val)"),
                ("threads", str(args.threads)),
                ("epochs", str(len(history))),
                ("iterations", str(iterations)),
                ("train wall time", f"{train_wall:.1f} s"),
                ("train CPU time", f"{train_cpu:.1f} s ({train_cpu / args.threads:.1f} s per thread)"),
                ("eval wall time", f"{eval_wall:.1f} s (base_size {long_side}, scales {list(test_cfg.scales)}, "
                                   f"flip {test_cfg.flip})"),
                ("mIoU", f"{scores['mIoU']:.4f}"),
                ("mAcc", f"{scores['mAcc']:.4f}"),
                ("aAcc", f"{scores['aAcc']:.4f}"),
                ("target", f"mIoU >= {TARGET_MIOU} in <= {TARGET_SECONDS:.0f} s: {'met' if met else 'NOT met'}"),
            ]
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
