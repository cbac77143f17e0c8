"""ONNX Runtime vs eager PyTorch latency for PSPNet-50 (473 crop) and PSANet-50 (465 crop), 150 classes.

Random weights (latency does not depend on their values). Each model is exported with the same
code as `sceneparse export` (export.graph.export_module + export.onnx_file.write_onnx), then timed
on this CPU at each batch size: --warmup calls, then --repeats rounds that call each way once in
turn (so that load from other processes falls on all of them alike); median and minimum per way.
The ways (--ways):

- eager:       PyTorch, torch.no_grad, logits zoomed to the crop in the model (the original);
- ort:         ONNX Runtime CPU, logits zoomed to the crop inside the graph (the export default);
- ort+zoom:    ONNX Runtime CPU, stride-8 logits, zoomed by the serving pipeline's numpy code
               (`--logits feature`), which is what the gateway then pays per tile;
- int8:        the ort graph quantized as `sceneparse export --precision int8` does it
               (export.quantize.quantize_graph: QDQ, per-channel int8 weights, uint8 activations,
               the classifier kept in fp32), calibrated on the pipeline windows of --calibration
               synthetic scenes. Target on a VNNI CPU: int8 >= 2x faster than ort.

onnxslim is tried on each graph (export.onnx_file.try_onnxslim) with --slim and its figures printed.
The table header gives the CPU's model and ISA flags.

    python bench/export_latency.py                       # both models, batch 1 and 4, eager/ort/int8
    python bench/export_latency.py --models pspnet50 --batches 1 --repeats 2 --ways ort,int8
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


class SceneWindows:
    """Calibration data: the serving pipeline's windows of a few rendered scenes (512x384, flip)."""

    def __init__(self, crop: int, images: int):
        from export.calibration import pipeline_windows
        from serving.pipeline import InferenceOptions, PipelineSpec
        from training.data.synthetic import class_styles, render_scene
        from training.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        spec = PipelineSpec(crop, crop, 150, IMAGENET_MEAN, IMAGENET_STD, 512)
        scenes = [render_scene(class_styles(6), 384, 512, np.random.default_rng([7, i]))[0] for i in range(images)]
        self.crops = [w for scene in scenes for w in pipeline_windows(scene, spec, InferenceOptions(flip=True))]
        self.windows = 0  # how many were fed (quantize_graph reports it)

    def get_next(self):
        if self.windows >= len(self.crops):
            return None
        self.windows += 1
        return {"input": self.crops[self.windows - 1][None]}


def quantize_for_bench(fp32_path: Path, int8_path: Path, crop: int, images: int, work: Path) -> dict:
    from export.quantize import QuantizationOptions, quantize_graph

    tick = time.perf_counter()
    done = quantize_graph(fp32_path, int8_path, SceneWindows(crop, images), QuantizationOptions(), work)
    print(f"  quantized {fp32_path.name} on {done['calibration_windows']} windows in "
          f"{time.perf_counter() - tick:.0f}s", file=sys.stderr)
    return done


def bench_model(name: str, batches: list[int], repeats: int, warmup: int, threads: int, work: Path,
                ways_wanted: tuple[str, ...] = ("eager", "ort", "int8"), calibration: int = 2,
                slim: bool = False) -> list[dict]:
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
    for logits in ("crop", "feature") if "ort+zoom" in ways_wanted else ("crop",):
        tick = time.perf_counter()
        module = export_module(model, crop, crop, logits=logits)
        paths[logits] = work / f"{name}_{logits}.onnx"
        write_onnx(module, torch.zeros(1, 3, crop, crop), paths[logits])
        print(f"  exported {name} ({logits} logits) in {time.perf_counter() - tick:.1f}s", file=sys.stderr)
    ort_crop = OrtRunner(paths["crop"], threads)
    ort_feature = OrtRunner(paths["feature"], threads) if "feature" in paths else None
    ort_int8 = None
    if "int8" in ways_wanted:
        quantize_for_bench(paths["crop"], work / f"{name}_int8.onnx", crop, calibration, work)
        ort_int8 = OrtRunner(work / f"{name}_int8.onnx", threads)

    def eager(batch):
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    def feature_then_zoom(batch):
        logits = ort_feature(batch)
        zoomed = resize_bilinear(logits.transpose(2, 3, 0, 1), (crop, crop), align_corners=True)
        return np.ascontiguousarray(zoomed.transpose(2, 3, 0, 1))

    rows = []
    rng = np.random.default_rng(0)
    available = {"eager": eager, "ort": ort_crop, "ort+zoom": feature_then_zoom, "int8": ort_int8}
    ways = tuple((label, available[label]) for label in ways_wanted)
    for batch_size in batches:
        batch = rng.standard_normal((batch_size, 3, crop, crop)).astype(np.float32)
        expected = ort_crop(batch)
        row = {"model": name, "crop": crop, "batch": batch_size}
        if "eager" in ways_wanted:
            row["delta"] = float(np.abs(expected - eager(batch)).max())
        if "int8" in ways_wanted:
            # Random weights and noise input: a check that the graph runs, not an accuracy figure.
            row["int8_agreement"] = float((ort_int8(batch).argmax(1) == expected.argmax(1)).mean())
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
    if slim:
        rows[0]["slim"] = try_onnxslim(paths["crop"], rng.standard_normal((1, 3, crop, crop)).astype(np.float32),
                                       threads=threads, repeats=max(1, repeats - 1))
    return rows


def print_table(rows: list[dict], threads: int, ways: tuple[str, ...], load_before: float) -> None:
    from sceneparse.cpu import describe_cpu

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{describe_cpu(threads)}")
    print(f"Latency per call in ms, median (min); random weights, 150 classes; load average {load_before:.1f} "
          f"before, {load:.1f} after\n(eager/ORT and ORT/int8: ratios of medians; ort+zoom = stride-8 logits + the "
          "pipeline's numpy zoom; int8 agree = argmax agreement with ORT fp32 on the noise batch, random weights)\n")
    columns = [("model", 10), ("crop", 4), ("batch", 5)] + [(w, 13) for w in ways]
    columns += [("eager/ORT", 9)] if "eager" in ways else []
    columns += [("ORT/int8", 8), ("int8 agree", 10)] if "int8" in ways else []
    columns += [("max|delta|", 10)] if "eager" in ways else []
    header = " ".join(f"{name:>{width}}" if i else f"{name:<{width}}" for i, (name, width) in enumerate(columns))
    print(header)
    print("-" * len(header))

    def cell(r, key):
        return f"{1000 * r[key]:.0f} ({1000 * r[key + '_min']:.0f})"

    for r in rows:
        cells = [f"{r['model']:<10}", f"{r['crop']:>4}", f"{r['batch']:>5}"] + [f"{cell(r, w):>13}" for w in ways]
        if "eager" in ways:
            cells.append(f"{r['eager'] / r['ort']:>9.2f}")
        if "int8" in ways:
            cells += [f"{r['ort'] / r['int8']:>8.2f}", f"{100 * r['int8_agreement']:>9.1f}%"]
        if "eager" in ways:
            cells.append(f"{r['delta']:>10.1e}")
        print(" ".join(cells))
    if "int8" in ways:
        worst = min(r["ort"] / r["int8"] for r in rows)
        print(f"\ntarget (VNNI CPU): int8 >= 2x faster than ORT fp32: worst ratio {worst:.2f} "
              f"({'met' if worst >= 2.0 else 'NOT met'})")
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
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    parser.add_argument("--ways", default="eager,ort,int8", help="comma-separated: eager, ort, ort+zoom, int8")
    parser.add_argument("--calibration", type=int, default=2, help="synthetic scenes to calibrate int8 on (4 windows each)")
    parser.add_argument("--slim", action="store_true", help="also try onnxslim on the fp32 graph")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    ways = tuple(w.strip() for w in args.ways.split(",") if w.strip())
    unknown = [w for w in ways if w not in ("eager", "ort", "ort+zoom", "int8")]
    if unknown or "ort" not in ways:
        parser.error(f"--ways needs ort and takes eager, ort, ort+zoom, int8 (got {args.ways})")
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="export-latency-") as tmp:
        for name in args.models.split(","):
            rows += bench_model(name.strip(), [int(b) for b in args.batches.split(",")], args.repeats, args.warmup,
                                args.threads, Path(tmp), ways, args.calibration, args.slim)
    print_table(rows, args.threads, ways, load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
