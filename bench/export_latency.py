"""ONNX Runtime vs eager PyTorch latency for PSPNet-50 (473 crop) and PSANet-50 (465 crop), 150 classes.

Random weights (latency does not depend on their values). Each model is exported with the same
code as `sceneparse export` (export.graph.export_module + export.onnx_file.write_onnx), then timed
on this CPU at each batch size: --warmup calls, then --repeats rounds that call each way once in
turn (so that load from other processes falls on all three alike); median and minimum per way.
Three ways are timed:

- eager:       PyTorch, torch.no_grad, logits zoomed to the crop in the model (the original);
- ort:         ONNX Runtime CPU, logits zoomed to the crop inside the graph (the export default);
- ort+zoom:    ONNX Runtime CPU, stride-8 logits, zoomed by the serving pipeline's numpy code
               (`--logits feature`), which is what the gateway then pays per tile.

onnxslim is tried on each graph (export.onnx_file.try_onnxslim) and its figures printed.

    python bench/export_latency.py                       # both models, batch 1 and 2, 3 repeats
    python bench/export_latency.py --models pspnet50 --batches 1 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {
    "pspnet50": dict(arch="psp", layers=50, classes=150, train_h=473, train_w=473, test_h=473, test_w=473),
    "psanet50": dict(arch="psa", layers=50, classes=150, train_h=465, train_w=465, test_h=465, test_w=465,
                     psa_type=2, compact=False, shrink_factor=2, psa_softmax=True, normalization_factor=1.0),
}


def bench_model(name: str, batches: list[int], repeats: int, warmup: int, threads: int, work: Path) -> list[dict]:
    import torch

    from export.graph import export_module
    from export.onnx_file import OrtRunner, try_onnxslim, write_onnx
    from serving.pipeline import resize_bilinear
    from training.models import build_model

    config = MODELS[name]
    crop = config["test_h"]
    torch.manual_seed(0)
    model = build_model(config, aux=False).eval()
    paths = {}
    for logits in ("crop", "feature"):
        tick = time.perf_counter()
        module = export_module(model, crop, crop, logits=logits)
        paths[logits] = work / f"{name}_{logits}.onnx"
        write_onnx(module, torch.zeros(1, 3, crop, crop), paths[logits])
        print(f"  exported {name} ({logits} logits) in {time.perf_counter() - tick:.1f}s", file=sys.stderr)
    ort_crop, ort_feature = OrtRunner(paths["crop"], threads), OrtRunner(paths["feature"], threads)

    def eager(batch):
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    def feature_then_zoom(batch):
        logits = ort_feature(batch)
        zoomed = resize_bilinear(logits.transpose(2, 3, 0, 1), (crop, crop), align_corners=True)
        return np.ascontiguousarray(zoomed.transpose(2, 3, 0, 1))

    rows = []
    rng = np.random.default_rng(0)
    ways = (("eager", eager), ("ort", ort_crop), ("ort+zoom", feature_then_zoom))
    for batch_size in batches:
        batch = rng.standard_normal((batch_size, 3, crop, crop)).astype(np.float32)
        reference = eager(batch)
        delta = float(np.abs(ort_crop(batch) - reference).max())
        delta_zoom = float(np.abs(feature_then_zoom(batch) - reference).max())
        row = {"model": name, "crop": crop, "batch": batch_size, "delta": delta, "delta_zoom": delta_zoom}
        for _ in range(warmup):
            for _, call in ways:
                call(batch)
        # Round robin, so that load from other processes falls on the three ways alike.
        samples: dict[str, list[float]] = {label: [] for label, _ in ways}
        for _ in range(repeats):
            for label, call in ways:
                start = time.perf_counter()
                call(batch)
                samples[label].append(time.perf_counter() - start)
        for label, times in samples.items():
            row[label], row[f"{label}_min"] = float(np.median(times)), float(min(times))
            print(f"  {name} batch {batch_size} {label}: median {1000 * row[label]:.0f} ms, "
                  f"min {1000 * row[label + '_min']:.0f} ms", file=sys.stderr)
        rows.append(row)
    slim = try_onnxslim(paths["crop"], rng.standard_normal((1, 3, crop, crop)).astype(np.float32), threads=threads,
                        repeats=max(1, repeats - 1))
    rows[0]["slim"] = slim
    return rows


def print_table(rows: list[dict], threads: int) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nLatency per call in ms, median (min); {threads} threads; random weights, 150 classes; "
          f"load average now {load:.1f}\n(ratio = eager / ORT, medians; ort+zoom = stride-8 logits + the pipeline's numpy zoom)\n")
    header = (f"{'model':<10} {'crop':>4} {'batch':>5} {'eager':>13} {'ORT':>13} {'ratio':>6} {'ort+zoom':>13} "
              f"{'max|delta|':>11}")
    print(header)
    print("-" * len(header))

    def cell(r, key):
        return f"{1000 * r[key]:.0f} ({1000 * r[key + '_min']:.0f})"

    for r in rows:
        print(f"{r['model']:<10} {r['crop']:>4} {r['batch']:>5} {cell(r, 'eager'):>13} {cell(r, 'ort'):>13} "
              f"{r['eager'] / r['ort']:>6.2f} {cell(r, 'ort+zoom'):>13} {r['delta']:>11.1e}")
    print()
    for r in rows:
        slim = r.get("slim")
        if slim:
            latency = slim.get("latency_s", {})
            print(f"onnxslim on {r['model']}: nodes {slim.get('nodes')}, batch-1 ORT "
                  f"{1000 * latency.get('original', float('nan')):.0f} -> {1000 * latency.get('slim', float('nan')):.0f} ms, "
                  f"max|delta| {slim.get('max_abs_delta', float('nan')):.1e}: {'kept' if slim.get('kept') else 'not kept'} "
                  f"({slim.get('reason', '')})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="pspnet50,psanet50", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--batches", default="1,2", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="export-latency-") as tmp:
        for name in args.models.split(","):
            rows += bench_model(name.strip(), [int(b) for b in args.batches.split(",")], args.repeats, args.warmup,
                                args.threads, Path(tmp))
    print_table(rows, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
