"""Data-loading cost per training sample: sceneparse's presets against the original's recipe.

    python bench/data_loading.py [--images N] [--size HxW] [--crop N] [--repeats R] [--seed S]

Writes N synthetic ADE20K-sized samples (JPEG image, PNG label of 150 classes) once under
.cache/bench/data_loading, then, in this one process, times what a DataLoader worker does per
sample: decode the pair and run the training preset (scale, rotate, blur, flip, crop, to tensor,
normalise), and the same for the validation preset (centre crop, to tensor, normalise).

The reference is the original project's recipe, written here from its documented semantics
(issue 11): images read with OpenCV (BGR converted to RGB, then float32), labels read as
grayscale, and the steps drawn from Python's `random` in the original's order with OpenCV's
resize / warpAffine / GaussianBlur / flip / copyMakeBorder. Both pipelines start each sample
from the same seed, so the table also says whether sceneparse gives the reference's tensors:
the share of label pixels that differ and the largest image difference after normalisation.

Each figure is the best of R passes over the N samples, collated into batches as a DataLoader
worker does (ms per sample); the ratio is sceneparse / reference from the same run. OpenCV runs single-threaded (as the original set it,
one DataLoader worker per core), torch with one thread.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sceneparse.cpu import describe_cpu  # noqa: E402
from training.data.dataset import SegmentationDataset  # noqa: E402
from training.data.transforms import train_transform, val_transform  # noqa: E402

MEAN = [v * 255 for v in (0.485, 0.456, 0.406)]
STD = [v * 255 for v in (0.229, 0.224, 0.225)]


# --- the original recipe, from its semantics ---------------------------------------------------
def reference_read(image_path: str, label_path: str) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV decode: BGR -> RGB, float32 image; 8-bit grayscale label."""
    image = cv2.cvtColor(cv2.imread(image_path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32)
    return image, cv2.imread(label_path, cv2.IMREAD_GRAYSCALE)


def reference_train(image, label, cfg):
    """Scale, rotate (p 0.5), blur (p 0.5), flip (p 0.5), random crop; draws from `random`."""
    s = cfg["scale_min"] + (cfg["scale_max"] - cfg["scale_min"]) * random.random()
    image = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST)
    if random.random() < 0.5:
        angle = cfg["rotate_min"] + (cfg["rotate_max"] - cfg["rotate_min"]) * random.random()
        h, w = label.shape
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
        image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=MEAN)
        label = cv2.warpAffine(label, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=cfg["ignore_label"])
    if random.random() < 0.5:
        image = cv2.GaussianBlur(image, (5, 5), 0)
    if random.random() < 0.5:
        image, label = cv2.flip(image, 1), cv2.flip(label, 1)
    return reference_crop(image, label, cfg, "rand")


def reference_crop(image, label, cfg, kind):
    crop_h, crop_w = cfg["train_h"], cfg["train_w"]
    h, w = label.shape
    pad_h, pad_w = max(crop_h - h, 0), max(crop_w - w, 0)
    if pad_h or pad_w:
        top, left = int(pad_h / 2), int(pad_w / 2)
        image = cv2.copyMakeBorder(image, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=MEAN)
        label = cv2.copyMakeBorder(label, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT,
                                   value=cfg["ignore_label"])
        h, w = label.shape
    if kind == "rand":
        top = random.randint(0, h - crop_h)
        left = random.randint(0, w - crop_w)
    else:
        top, left = int((h - crop_h) / 2), int((w - crop_w) / 2)
    return image[top:top + crop_h, left:left + crop_w], label[top:top + crop_h, left:left + crop_w]


def reference_tensors(image, label):
    tensor = torch.from_numpy(image.transpose((2, 0, 1))).float()
    for channel, m, s in zip(tensor, MEAN, STD, strict=True):
        channel.sub_(m).div_(s)
    return tensor, torch.from_numpy(label).long()


def reference_sample(pair, cfg, split):
    image, label = reference_read(*pair)
    if split == "train":
        image, label = reference_train(image, label, cfg)
    else:
        image, label = reference_crop(image, label, cfg, "center")
    return reference_tensors(image, label)


# --- data and timing ---------------------------------------------------------------------------
def write_samples(folder: Path, count: int, height: int, width: int) -> Path:
    """`count` JPEG images with smooth structure and PNG labels of blocks of 150 ids; the list file."""
    list_path = folder / f"train_{count}_{height}x{width}.txt"
    if list_path.is_file():
        return list_path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        low = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
        noise = rng.integers(-12, 13, image.shape)
        image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        blocks = rng.integers(0, 150, (height // 32 + 1, width // 32 + 1), dtype=np.uint8)
        label = cv2.resize(blocks, (width, height), interpolation=cv2.INTER_NEAREST)
        Image.fromarray(image).save(folder / f"{i:04d}.jpg", quality=90)
        Image.fromarray(label).save(folder / f"{i:04d}.png")
        lines.append(f"{i:04d}.jpg {i:04d}.png")
    list_path.write_text("\n".join(lines) + "\n")
    return list_path


def timed_pass(load, count: int, seed: int, batch: int) -> tuple[float, list]:
    """Load every sample (seeded by its index) and collate them into batches, as a DataLoader
    worker does: the collate's copy is part of the cost (the original left its tensors strided)."""
    outputs = []
    start = time.perf_counter()
    for first in range(0, count, batch):
        samples = []
        for i in range(first, min(first + batch, count)):
            random.seed(seed + i)
            samples.append(load(i))
        default_collate(samples)
        outputs.extend(samples)
    return time.perf_counter() - start, outputs


def compare(ours: list, reference: list) -> tuple[float, float]:
    """(share of label pixels that differ, largest |image difference|), over all samples."""
    differ = total = 0
    worst = 0.0
    for (image, label), (ref_image, ref_label) in zip(ours, reference, strict=True):
        if image.shape != ref_image.shape:
            return 1.0, float("inf")
        differ += int((label != ref_label).sum())
        total += label.numel()
        worst = max(worst, float((image - ref_image).abs().max()))
    return differ / total, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", default="512x683", help="sample size HxW (ADE20K's typical shape)")
    parser.add_argument("--crop", type=int, default=473, help="train_h = train_w (the ADE20K configs' 473)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8, help="samples per collated batch")
    parser.add_argument("--data", type=Path, default=ROOT / ".cache" / "bench" / "data_loading")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    height, width = (int(v) for v in args.size.lower().split("x"))
    list_path = write_samples(args.data.resolve(), args.images, height, width)
    cfg = {"scale_min": 0.5, "scale_max": 2.0, "rotate_min": -10.0, "rotate_max": 10.0,
           "train_h": args.crop, "train_w": args.crop, "ignore_label": 255}
    pairs = [tuple(str(list_path.parent / p) for p in line.split()) for line in list_path.read_text().split("\n") if line]

    rows = []
    for split, preset in (("train", train_transform), ("val", val_transform)):
        dataset = SegmentationDataset(split, list_path.parent, list_path, transform=preset(cfg))
        best = {"sceneparse": float("inf"), "reference": float("inf")}
        outputs = {}
        for _ in range(args.repeats):  # interleaved, so a noisy neighbour hurts both alike
            for name, load in (("reference", lambda i, s=split: reference_sample(pairs[i], cfg, s)),
                               ("sceneparse", dataset.__getitem__)):
                seconds, outputs[name] = timed_pass(load, len(pairs), args.seed, args.batch)
                best[name] = min(best[name], seconds)
        labels_differ, image_gap = compare(outputs["sceneparse"], outputs["reference"])
        ms_ours, ms_ref = (1000 * best[k] / len(pairs) for k in ("sceneparse", "reference"))
        rows.append((split, f"{ms_ref:.2f}", f"{ms_ours:.2f}", f"{ms_ours / ms_ref:.2f}",
                     f"{100 * labels_differ:.2f}", f"{image_gap:.2e}"))

    print(describe_cpu(1))
    print(f"{len(pairs)} samples {height}x{width} (JPEG + PNG), crop {args.crop}, collated by {args.batch}, "
          f"best of {args.repeats} passes, "
          f"opencv {cv2.__version__}, torch {torch.__version__}")
    header = ("preset", "reference ms/sample", "sceneparse ms/sample", "ratio", "label px differ %",
              "max |image diff|")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
