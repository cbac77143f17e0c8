"""fp32 vs int8 on the tiny synthetic models: mIoU through the pipeline, agreement, latency. Prints a table.

    python bench/int8_accuracy.py                  # PSPNet-18 and PSANet-18 trained by bench/train_synthetic.py
    python bench/int8_accuracy.py --models pspnet18 --workdir .cache/bench

Each model's checkpoint is the last one `bench/train_synthetic.py` wrote under
`<workdir>/<model>/model` (train them first; `--data` is the dataset they were trained on). The
checkpoint is exported in fp32 and, for each set of node groups left in fp32 (`--variants`,
e.g. `classifier` = the default of `sceneparse export --precision int8`), in int8, all with the
real `export_checkpoint`: calibrated on 32 train images' pipeline windows, the argmax agreement
measured on 8 held-out val images' crops, and fp32 and int8 scored through the serving pipeline
on the whole val list (base_size = the images' long side, flip, as train_synthetic scores them).
The gate's thresholds are not applied here, so that every variant gets its row; the last
column says whether the default gate (agreement >= 99%, mIoU drop <= 0.5 points) passes.
Latency: seconds per val image through the pipeline (ONNX Runtime, --threads), median over
--latency-images images timed round robin, and the label maps' pixel agreement on those images.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {"pspnet18": "synthetic/synthetic_pspnet18", "psanet18": "synthetic/synthetic_psanet18"}
DEFAULT_VARIANTS = {"pspnet18": "none;classifier", "psanet18": "none;classifier;classifier,attention"}


def newest_checkpoint(folder: Path) -> Path:
    candidates = sorted(folder.glob("train_epoch_*.pth"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not candidates:
        raise SystemExit(f"no train_epoch_*.pth in {folder}: run bench/train_synthetic.py for this model first")
    return candidates[-1]


def model_config(name: str, data: Path):
    from PIL import Image

    from training.config import find_config, load_config

    first = data / (data / "val.txt").read_text().split()[0]
    with Image.open(first) as image:
        long_side = max(image.size)
    return load_config(find_config(CONFIGS[name]), [
        "data_root", str(data), "train_list", str(data / "train.txt"), "val_list", str(data / "val.txt"),
        "test_list", str(data / "val.txt"), "names_path", str(data / "synthetic_names.txt"),
        "colors_path", str(data / "synthetic_colors.txt"), "base_size", str(long_side)])


def time_pipeline(repository, names: list[str], images: list[np.ndarray], threads: int) -> dict[str, dict]:
    """Seconds per image through the pipeline for each model (round robin), and their label maps."""
    from serving.backends.onnxruntime import OnnxRuntimeBackend
    from serving.pipeline import PipelineSpec
    from serving.segmentation import SegmentOptions, segment_image

    backend = OnnxRuntimeBackend(device="cpu", threads=threads)
    loaded = {}
    for name in names:
        meta = repository.read_metadata(name)
        loaded[name] = (meta, backend.open(repository, meta), PipelineSpec.from_metadata(meta))
    out = {name: {"times": [], "labels": []} for name in names}
    for meta, runner, spec in loaded.values():  # warm-up
        segment_image(images[0], runner, meta, SegmentOptions.defaults_for(meta), spec=spec)
    for image in images:
        for name, (meta, runner, spec) in loaded.items():
            start = time.perf_counter()
            label = segment_image(image, runner, meta, SegmentOptions.defaults_for(meta), spec=spec)
            out[name]["times"].append(time.perf_counter() - start)
            out[name]["labels"].append(label)
    return out


def bench_model(name: str, workdir: Path, data: Path, variants: list[tuple[str, ...]], threads: int,
                latency_images: int, tmp: Path) -> list[dict]:
    from export import ExportOptions, export_checkpoint
    from export.calibration import read_list_images, read_rgb
    from export.quantize import MAX_MIOU_DROP, MIN_AGREEMENT, QuantizationOptions
    from serving.repository import ModelRepository

    cfg = model_config(name, data)
    checkpoint = newest_checkpoint(workdir / name / "model")
    repository = ModelRepository(tmp / name)
    tick = time.perf_counter()
    export_checkpoint(cfg, checkpoint, repository,
                      ExportOptions(max_batch_size=4, simplify=False), name=f"{name}_fp32")
    print(f"  {name}: fp32 export {time.perf_counter() - tick:.0f} s", file=sys.stderr)
    results = {}
    for keep in variants:
        label = ",".join(keep) or "none"
        options = QuantizationOptions(keep_fp32=keep, min_agreement=0.0, max_miou_drop=1.0)
        tick = time.perf_counter()
        result = export_checkpoint(cfg, checkpoint, repository,
                                   ExportOptions(max_batch_size=4, int8=options),
                                   name=f"{name}_int8_{label.replace(',', '_')}")
        results[label] = result
        gate = result.parity["int8"]
        print(f"  {name}: int8 keep_fp32={label}: {time.perf_counter() - tick:.0f} s, agreement "
              f"{100 * gate['argmax_agreement']:.3f}%, mIoU {gate['miou']['fp32']:.4f} -> {gate['miou']['int8']:.4f}",
              file=sys.stderr)
    val = read_list_images(data / "val.txt", data)
    images = [read_rgb(item.image_path) for item in val[-latency_images:]]  # not the first (held-out) ones only
    names = [f"{name}_fp32"] + [r.name for r in results.values()]
    timing = time_pipeline(repository, names, images, threads)
    fp32 = timing[f"{name}_fp32"]
    first = next(iter(results.values())).parity["int8"]
    rows = [{"model": name, "variant": "fp32", "miou": first["miou"]["fp32"], "agreement": None, "label_agreement": None,
             "seconds": statistics.median(fp32["times"]), "gate": "-", "checkpoint": checkpoint.name,
             "val_images": first["miou"]["images"]}]
    for label, result in results.items():
        gate = result.parity["int8"]
        mine = timing[result.name]
        agree = np.mean([float((a == b).mean()) for a, b in zip(mine["labels"], fp32["labels"], strict=True)])
        passes = gate["argmax_agreement"] >= MIN_AGREEMENT and gate["miou_drop"] <= MAX_MIOU_DROP
        rows.append({"model": name, "variant": f"int8, fp32 kept: {label}", "miou": gate["miou"]["int8"],
                     "drop": gate["miou_drop"], "agreement": gate["argmax_agreement"],
                     "crops": gate["agreement"]["crops"], "label_agreement": agree,
                     "seconds": statistics.median(mine["times"]), "gate": "pass" if passes else "FAIL",
                     "windows": gate["calibration"]["windows"]})
    return rows


def print_table(rows: list[dict], threads: int, latency_images: int, load_before: float) -> None:
    from sceneparse.cpu import describe_cpu

    print(f"\n{describe_cpu(threads)}; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"mIoU through the serving pipeline on the whole val list; agreement = argmax agreement with fp32 on the "
          f"held-out crops (the gate's figure); labels = pixel agreement of the final label maps and seconds per "
          f"image = pipeline latency, both on {latency_images} val images (median)\n")
    header = (f"{'model':<9} {'variant':<38} {'mIoU':>7} {'drop pts':>8} {'agreement':>9} {'labels':>8} "
              f"{'s/image':>8} {'x fp32':>6} {'default gate':>12}")
    print(header)
    print("-" * len(header))
    base = {}
    for r in rows:
        if r["variant"] == "fp32":
            base[r["model"]] = r["seconds"]
        drop = f"{100 * r['drop']:+.2f}" if r.get("drop") is not None else "-"
        agreement = f"{100 * r['agreement']:.2f}%" if r["agreement"] is not None else "-"
        labels = f"{100 * r['label_agreement']:.2f}%" if r["label_agreement"] is not None else "-"
        speed = base[r["model"]] / r["seconds"]
        print(f"{r['model']:<9} {r['variant']:<38} {100 * r['miou']:>7.2f} {drop:>8} {agreement:>9} {labels:>8} "
              f"{r['seconds']:>8.3f} {speed:>6.2f} {r['gate']:>12}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="pspnet18,psanet18", help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "bench",
                        help="where train_synthetic.py's --workdir for each model lives (<workdir>/<model>/model)")
    parser.add_argument("--data", type=Path, default=ROOT / ".cache" / "bench" / "synthetic_192x256")
    parser.add_argument("--variants", default=None,
                        help="';'-separated sets of fp32 groups, e.g. 'none;classifier' (default per model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--latency-images", type=int, default=8)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-accuracy-") as tmp:
        for name in (m.strip() for m in args.models.split(",")):
            spec = args.variants or DEFAULT_VARIANTS[name]
            variants = [tuple(g for g in v.split(",") if g and g != "none") for v in spec.split(";")]
            rows += bench_model(name, args.workdir.resolve(), args.data.resolve(), variants, args.threads,
                                args.latency_images, Path(tmp))
    print_table(rows, args.threads, args.latency_images, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
