"""What each output costs: the answer's size and the time it adds beyond `output=label`.

One 512x384 image, a 150-class model (ADE20K's classes and palette, crop 473, base size 512,
single scale with flip: 4 crops), through the gateway's own request job (decode, the shared
pipeline, rendering and encoding: `serving.api.routes.segment`), every output in turn, for
`--rounds` interleaved rounds; the table gives each output's answer size and the median time
each adds to `label`'s: its rendering and encoding (the request's own "encode" stage) and,
for the confidence, what the pipeline's band loop adds (timed alone on the bands, read once: a
whole request's time varies by more than these figures on a shared machine). The offline
outputs (`sceneparse predict`'s per-image work: `--output coco`'s `.rle.json`, `--probabilities`'
`.npz`) are timed the same way: render and atomic write, plus the band loop's float16 planes.

The model, by default, is a stand-in whose outputs have a trained network's structure: a
nearest-colour classifier over the 150 palette colours, computed at stride 8 and zoomed by the
pipeline as an exported PSPNet's logits are (ONNX Runtime's softmax and all the rest run for
real). The image is a scene of 12 ADE20K classes in their palette colours, with noise and soft
edges, so the label map has regions and the confidence drops at their borders, as with a trained
model. The sizes therefore resemble a real answer's, and the model's own time is small, so the
excess of each output stands out (a PSPNet-50 request takes about 16 s on 2 cores:
bench/gateway.py). `--repository R --model NAME` measures a published model instead.

    python bench/outputs.py                      # 3 rounds, stand-in model
    python bench/outputs.py --rounds 7
    python bench/outputs.py --repository model_repository --model ade20k_pspnet50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEIGHT, WIDTH = 384, 512
CROP, BASE_SIZE, STRIDE = 473, 512, 8
# (label, answer kind, query parameters); "classes" are three of the scene's classes.
GATEWAY_OUTPUTS = [
    ("label", {"output": "label"}),
    ("color", {"output": "color"}),
    ("overlay", {"output": "overlay"}),
    ("confidence", {"output": "confidence"}),
    ("json", {"output": "json"}),
    ("json + png=color", {"output": "json", "png": ["color"]}),
    ("rle", {"output": "rle"}),
    ("color, classes=3", {"output": "color", "classes": ["sky,road,car"]}),
    ("label, classes=3", {"output": "label", "classes": ["sky,road,car"]}),
]
SCENE_CLASSES = ["sky", "building", "road", "sidewalk", "tree", "car", "person", "grass", "wall",
                 "signboard", "streetlight", "fence"]


def ade20k_metadata(name: str = "standin_ade20k"):
    from serving.repository import ModelMetadata
    from training.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from training.datasets import dataset_info

    info = dataset_info("ade20k")
    return ModelMetadata(
        name=name, version=1, arch="psp", layers=50, dataset="ade20k", classes=list(info.classes),
        palette=[[int(v) for v in row] for row in np.asarray(info.palette)], crop_h=CROP, crop_w=CROP,
        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), base_size=BASE_SIZE, test_scales=[1.0], flip=True,
        max_batch_size=8, output_hw=[CROP // STRIDE + 1, CROP // STRIDE + 1],
    )


class NearestColourModel:
    """Stands in for a 150-class network trained on street scenes: each of the scene's classes
    scores minus the squared distance between the 8x8-pooled window and its palette colour (over
    `temperature`, at least -`floor`), every other class `tail` below that floor (a trained
    network's small but non-zero tail); at stride 8, so the pipeline zooms the logits to the crop with align_corners,
    as it does an exported model's "feature" logits."""

    def __init__(self, meta, known: list[str], temperature: float = 600.0, floor: float = 30.0, tail: float = 4.0):
        self.mean = np.asarray(meta.mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(meta.std, np.float32).reshape(1, 3, 1, 1)
        self.known = np.asarray([meta.classes.index(name) for name in known])
        self.palette = np.asarray(meta.palette, np.float32)[self.known]  # (known, 3)
        self.classes = meta.num_classes
        self.temperature, self.floor, self.tail = temperature, floor, tail
        self.max_batch_size = meta.max_batch_size

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        pixels = batch * self.std + self.mean  # back to 0-255
        n, _, h, w = pixels.shape
        out = h // STRIDE + 1
        padded = np.pad(pixels, ((0, 0), (0, 0), (0, out * STRIDE - h), (0, out * STRIDE - w)), mode="edge")
        pooled = padded.reshape(n, 3, out, STRIDE, out, STRIDE).mean(axis=(3, 5))  # (n, 3, out, out)
        distance = ((pooled[:, None] - self.palette[None, :, :, None, None]) ** 2).sum(axis=2)
        # Bounded scores: the pipeline interpolates logits, and unbounded ones would let a constant
        # tail win between two regions whose scores both fall steeply.
        scores = np.maximum(-distance / self.temperature, -self.floor)  # (n, known, out, out)
        logits = np.full((n, self.classes, out, out), -self.floor - self.tail, dtype=np.float32)
        logits[:, self.known] = scores
        return logits.astype(np.float32)

    def close(self) -> None:
        pass


def scene_image(meta, seed: int = 0) -> np.ndarray:
    """A 512x384 street-like scene in the ADE20K palette colours of 12 classes, noisy, soft edges."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    color = {name: tuple(meta.palette[meta.classes.index(name)]) for name in SCENE_CLASSES}
    image = Image.new("RGB", (WIDTH, HEIGHT), color["sky"])
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 110, WIDTH, 260], fill=color["building"])
    draw.rectangle([300, 60, 420, 260], fill=color["building"])
    draw.rectangle([0, 200, 90, 270], fill=color["wall"])
    draw.polygon([(0, 384), (0, 280), (512, 280), (512, 384)], fill=color["road"])
    draw.rectangle([0, 258, WIDTH, 290], fill=color["sidewalk"])
    draw.rectangle([380, 300, 512, 384], fill=color["grass"])
    for x in (40, 180, 460):
        draw.ellipse([x - 35, 120, x + 35, 230], fill=color["tree"])
    draw.rounded_rectangle([120, 300, 260, 360], radius=18, fill=color["car"])
    draw.rounded_rectangle([300, 310, 370, 350], radius=12, fill=color["car"])
    for x in (100, 280):
        draw.ellipse([x - 10, 230, x + 10, 250], fill=color["person"])
        draw.rectangle([x - 12, 250, x + 12, 300], fill=color["person"])
    draw.rectangle([220, 150, 280, 180], fill=color["signboard"])
    draw.rectangle([440, 90, 446, 280], fill=color["streetlight"])
    draw.rectangle([90, 262, 300, 285], fill=color["fence"])
    image = image.filter(ImageFilter.GaussianBlur(2))
    noisy = np.asarray(image, np.float32) + rng.normal(0, 8, (HEIGHT, WIDTH, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


@dataclass
class Row:
    name: str
    where: str
    size: int
    render: list[float]  # seconds: rendering and encoding (the gateway's "encode" stage), or render + write
    pipeline: float = 0.0  # seconds the pipeline's band loop spends on it beyond the label (median)


def _model(args):
    from serving.pipeline import PipelineSpec

    if args.model:
        from serving.backends.onnxruntime import OnnxRuntimeBackend
        from serving.repository import ModelRepository

        repository = ModelRepository(args.repository)
        meta = repository.read_metadata(args.model)
        runner = OnnxRuntimeBackend(device="cpu", threads=args.threads).open(repository, meta)
        return meta, runner, PipelineSpec.from_metadata(meta), f"{meta.name} v{meta.version}"
    meta = ade20k_metadata()
    return (meta, NearestColourModel(meta, SCENE_CLASSES), PipelineSpec.from_metadata(meta),
            "stand-in (nearest palette colour)")


def _median_seconds(work, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        tick = time.perf_counter()
        work()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def band_extras(image, runner, spec, options, rounds: int) -> dict[str, float]:
    """What confidence and probabilities add to the pipeline's band loop (serving/segmentation.py):
    the bands are read once and kept, then each addition is timed alone on them."""
    from serving.float16 import to_float16
    from serving.pipeline import window_probabilities
    from serving.segmentation import confidence_levels

    field = window_probabilities(image, runner, spec, options.pipeline_options(), None)
    bands = [(rows, probs.copy()) for rows, probs in field.bands()]
    label = np.empty((field.height, field.width), np.uint8)
    levels = np.empty((field.height, field.width), np.uint8)
    planes = np.empty((field.num_classes, field.height, field.width), np.float16)

    def argmax():
        for rows, probs in bands:
            label[rows] = probs.argmax(axis=2)

    def confidence():
        for rows, probs in bands:
            levels[rows] = confidence_levels(probs.max(axis=2))

    def probabilities():  # as serving/segmentation.py does it
        for rows, probs in bands:
            planes[:, rows] = to_float16(probs).transpose(2, 0, 1)

    def probabilities_numpy_cast():  # what it did before serving/float16.py
        for rows, probs in bands:
            planes[:, rows] = probs.astype(np.float16).transpose(2, 0, 1)

    return {"label": _median_seconds(argmax, rounds), "confidence": _median_seconds(confidence, rounds),
            "probabilities": _median_seconds(probabilities, rounds),
            "probabilities_numpy_cast": _median_seconds(probabilities_numpy_cast, rounds)}


def measure(args) -> tuple[list[Row], str, dict[str, float], dict[str, float]]:
    from serving.api.routes.segment import SegmentParams, _chosen_classes, _segment_job
    from serving.batch.outputs import OutputPlan, write_outputs
    from serving.imaging import decode_image
    from serving.models import LoadedModel
    from serving.rendering import encode_png
    from serving.segmentation import SegmentOptions, segment

    meta, runner, spec, described = _model(args)
    loaded = LoadedModel(meta=meta, runner=runner, spec=spec)
    data = encode_png(scene_image(meta)) if not args.image else Path(args.image).read_bytes()
    options = SegmentOptions.defaults_for(meta, max_side=1024)
    rows: dict[str, Row] = {}
    stages: dict[str, list[float]] = {}
    jobs = {}
    for name, query in GATEWAY_OUTPUTS:
        params = SegmentParams(**query)
        jobs[name] = _segment_job(data, loaded, options, params, _chosen_classes(params, loaded), 10**8)
    # Whole requests through the gateway's job: the answers, and the "encode" stage each one adds.
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for name, job in jobs.items():
            body, _, seconds, _ = job(threading.Event())
            if not round_index:
                continue
            row = rows.setdefault(name, Row(name, "gateway", len(body), []))
            row.render.append(seconds["encode"])
            if name == "label":
                for stage, value in seconds.items():
                    stages.setdefault(stage, []).append(value)
    image = decode_image(data, 10**8)
    extras = band_extras(image, runner, spec, options, max(5, args.rounds))
    rows["confidence"].pipeline = extras["confidence"]
    # Offline: `sceneparse predict`'s per-image writes of one prediction.
    prediction = segment(image, runner, meta, options, spec=spec, confidence=True, probabilities=True)
    out = Path(args.workdir)
    offline = {"predict --output label": (["label"], False, 0.0),
               "predict --output coco (.rle.json)": (["coco"], False, 0.0),
               "predict --probabilities (.npz)": ([], True, extras["probabilities"])}
    for name, (kinds, probabilities, pipeline) in offline.items():
        plan = OutputPlan.for_kinds(kinds, probabilities=probabilities)
        seconds = [_median_seconds(lambda plan=plan: write_outputs(plan, out, "street", prediction, meta), 1)
                   for _ in range(args.rounds)]
        rows[name] = Row(name, "offline", plan.paths(out, "street")[-1].stat().st_size, seconds, pipeline)
    return list(rows.values()), described, {k: statistics.median(v) for k, v in stages.items()}, extras


def print_table(rows: list[Row], described: str, stages: dict[str, float], extras: dict[str, float], args) -> None:
    from sceneparse.cpu import describe_cpu

    print(f"\nWhat each output costs: one {WIDTH}x{HEIGHT} image, 150 classes, crop {CROP}, single scale + flip; "
          f"model: {described}; medians of {args.rounds} rounds")
    print(describe_cpu(args.threads))
    print(f"load average before: {args.load_before:.2f} (a shared machine: compare rows of one run only)")
    base = {where: statistics.median(next(r for r in rows if r.where == where).render) for where in ("gateway", "offline")}
    header = ("output", "path", "answer bytes", "render ms", "pipeline extra ms", "extra ms over label")
    lines = [header]
    for row in rows:
        render = statistics.median(row.render)
        extra = render - base[row.where] + row.pipeline
        lines.append((row.name, row.where, f"{row.size:,}", f"{render * 1000:.1f}", f"{row.pipeline * 1000:.1f}",
                      f"{extra * 1000:+.1f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for index, line in enumerate(lines):
        print("  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(line)))
        if index == 0:
            print("  ".join("-" * w for w in widths))
    total = sum(stages.values())
    print(f"a whole label request: {total * 1000:.0f} ms (" + ", ".join(f"{k} {v * 1000:.1f}" for k, v in stages.items())
          + f"); the band loop's argmax alone {extras['label'] * 1000:.1f} ms")
    print(f"the probabilities' float16 planes with numpy's own cast: {extras['probabilities_numpy_cast'] * 1000:.1f} ms "
          f"(serving/float16.py: {extras['probabilities'] * 1000:.1f} ms)")
    print("render ms: the gateway's encode stage (rendering, PNG/JSON encoding); offline: render + atomic write of "
          "the file. pipeline extra: what the band loop adds for it (confidence: max and rounding; probabilities: "
          f"float16 planes, {150 * HEIGHT * WIDTH * 2 / 2**20:.1f} MiB before compression)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                        help="ONNX Runtime threads (for --model and the pipeline's softmax)")
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--model", default=None, help="a published model instead of the stand-in")
    parser.add_argument("--image", default=None, help="an image file instead of the rendered scene")
    parser.add_argument("--workdir", default=str(ROOT / ".cache" / "bench" / "outputs"))
    args = parser.parse_args(argv)
    args.load_before = os.getloadavg()[0]
    rows, described, stages, extras = measure(args)
    print_table(rows, described, stages, extras, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
