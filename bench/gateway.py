"""Gateway (ONNX Runtime, CPU) against the original test script in eager PyTorch: one image, PSPNet-50.

PSPNet-50 with the ADE20K config (150 classes, 473 crop, base_size 512, single scale with flip)
and random weights, seeded (latency does not depend on the values). The checkpoint is exported
with `export.export_checkpoint` (what `sceneparse export` runs) into a temporary model
repository, and a real `sceneparse serve` process (uvicorn) serves it. One 512x384 image then
goes, in turn:

- gateway: `POST /v1/segment?output=label` with the PNG as the body, timed by the client from
  the first byte sent to the last byte received (HTTP, decode, the shared pipeline, encode);
- eager:   the original test script's protocol written out in PyTorch in this process (resize,
  pad with the mean, sliding window with stride ceil(2/3 crop), one forward pass per crop with
  the crop and its flip as a batch of 2, softmax, averaging, resize back, argmax) with the same
  weights and as many threads.

The share of gateway time outside the model is 1 - (inference stage seconds, from the gateway's
own /metrics histogram) / (client-side request seconds). The table also gives the pixel agreement
of the two label maps.

With `--precision int8` the same checkpoint is also exported as int8 (`sceneparse export
--precision int8`: calibrated on the pipeline windows of 2 rendered scenes, the agreement
measured on 2 others; with random weights the gate's thresholds are not applied, its figures
are printed) and served by the same gateway as `<name>_int8`; each round then times the fp32
and the int8 model through the gateway and the eager original, and the table adds the int8
row and the int8 labels' agreement with fp32 (gateway fp32 and eager). Target on a VNNI CPU:
int8 through the gateway >= 2.5x faster than the eager original. Random weights make the
agreement a lower bound: a trained network's logits have far larger margins (docs/export.md).

    python bench/gateway.py                          # 1 warm-up, 3 timed rounds, export max batch 4
    python bench/gateway.py --repeats 5 --max-batch-size 2
    python bench/gateway.py --precision int8
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = "ade20k/ade20k_pspnet50"
NAME = "bench_pspnet50"


def test_image(height: int = 384, width: int = 512, seed: int = 0) -> np.ndarray:
    """A synthetic scene from `sceneparse make-synthetic`'s renderer, (H, W, 3) uint8."""
    from training.data.synthetic import class_styles, render_scene

    image, _ = render_scene(class_styles(6), height, width, np.random.default_rng(seed))
    return image


def build_checkpoint(path: Path, seed: int = 0) -> None:
    import torch

    from training.config import find_config, load_config
    from training.models import build_model

    cfg = load_config(find_config(CONFIG), ["pretrained_backbone", "None"])
    torch.manual_seed(seed)
    model = build_model(cfg, aux=False, backbone_weights=False).eval()
    torch.save({"state_dict": model.state_dict()}, path)


# --- the eager baseline: the original test script's protocol -----------------------------------
class EagerOriginal:
    """The original `test.py` (scale_process + net_process) in PyTorch, one crop (+ flip) per forward."""

    def __init__(self, checkpoint: Path, cfg, mean: list[float], std: list[float]):
        import torch

        from training.models import build_model, load_checkpoint

        self.torch = torch
        self.model = build_model(cfg, aux=False, backbone_weights=False).eval()
        load_checkpoint(self.model, checkpoint)
        self.crop_h, self.crop_w = int(cfg.test_h), int(cfg.test_w)
        self.base_size = int(cfg.base_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)  # 0-255 scale, as exported
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.classes = int(cfg.classes)

    def net_process(self, crop):  # crop: (3, crop_h, crop_w) float, 0-255
        torch, functional = self.torch, self.torch.nn.functional
        normalised = ((crop - self.mean) / self.std).unsqueeze(0)
        batch = torch.cat([normalised, normalised.flip(3)], 0)
        with torch.no_grad():
            output = self.model(batch)
        if output.shape[2:] != batch.shape[2:]:
            output = functional.interpolate(output, batch.shape[2:], mode="bilinear", align_corners=True)
        output = functional.softmax(output, dim=1)
        return (output[0] + output[1].flip(2)) / 2

    def scale_process(self, image):  # image: (3, h, w) float 0-255
        torch = self.torch
        _, ori_h, ori_w = image.shape
        pad_h, pad_w = max(self.crop_h - ori_h, 0), max(self.crop_w - ori_w, 0)
        top, left = pad_h // 2, pad_w // 2
        if pad_h or pad_w:
            padded = self.mean.expand(3, ori_h + pad_h, ori_w + pad_w).clone()
            padded[:, top:top + ori_h, left:left + ori_w] = image
            image = padded
        _, new_h, new_w = image.shape
        stride_h, stride_w = math.ceil(self.crop_h * 2 / 3), math.ceil(self.crop_w * 2 / 3)
        grid_h = math.ceil(max(new_h - self.crop_h, 0) / stride_h) + 1
        grid_w = math.ceil(max(new_w - self.crop_w, 0) / stride_w) + 1
        prediction = torch.zeros(self.classes, new_h, new_w)
        count = torch.zeros(1, new_h, new_w)
        for index_h in range(grid_h):
            s_h = min(index_h * stride_h + self.crop_h, new_h) - self.crop_h
            for index_w in range(grid_w):
                s_w = min(index_w * stride_w + self.crop_w, new_w) - self.crop_w
                window = image[:, s_h:s_h + self.crop_h, s_w:s_w + self.crop_w]
                prediction[:, s_h:s_h + self.crop_h, s_w:s_w + self.crop_w] += self.net_process(window)
                count[:, s_h:s_h + self.crop_h, s_w:s_w + self.crop_w] += 1
        prediction /= count
        return prediction[:, top:top + ori_h, left:left + ori_w]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W) uint8 class ids, single scale 1.0 with flip."""
        torch, functional = self.torch, self.torch.nn.functional
        height, width = image.shape[:2]
        long_size = self.base_size
        new_h, new_w = (long_size, round(long_size / height * width)) if height > width else \
            (round(long_size / width * height), long_size)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        if (new_h, new_w) != (height, width):
            tensor = functional.interpolate(tensor[None], (new_h, new_w), mode="bilinear", align_corners=False)[0]
        prediction = self.scale_process(tensor)
        if (new_h, new_w) != (height, width):
            prediction = functional.interpolate(prediction[None], (height, width), mode="bilinear",
                                                align_corners=False)[0]
        return prediction.argmax(0).numpy().astype(np.uint8)


# --- the gateway ---------------------------------------------------------------------------------
def start_gateway(repository: Path, threads: int, log_path: Path, settings: dict[str, str] | None = None):
    """A `sceneparse serve` process on a free port, ready; `settings`: more SCENEPARSE_* variables."""
    import httpx

    from training.distributed import find_free_port

    port = find_free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCENEPARSE_")}
    env.update({"SCENEPARSE_REPOSITORY": str(repository), "SCENEPARSE_PORT": str(port),
                "SCENEPARSE_POLL_INTERVAL": "0", "SCENEPARSE_ORT_THREADS": str(threads),
                "SCENEPARSE_WORKERS": "1", "SCENEPARSE_REQUEST_TIMEOUT": "600", "SCENEPARSE_LOG_LEVEL": "warning",
                **(settings or {})})
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen([sys.executable, "-m", "sceneparse.cli", "serve"], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise TimeoutError(f"gateway not ready after 300 s: {log_path.read_text()[-2000:]}")


def stage_seconds(url: str) -> dict[str, float]:
    """Sum of each stage's seconds so far, from the gateway's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    sums = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        if family.name == "sceneparse_stage_duration_seconds":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    sums[sample.labels["stage"]] = sample.value
    return sums


def gateway_request(client, url: str, body: bytes, model: str = NAME) -> tuple[float, np.ndarray]:
    from PIL import Image

    start = time.perf_counter()
    response = client.post(f"{url}/v1/segment", params={"model": model, "output": "label", "flip": "true"},
                           content=body, headers={"Content-Type": "application/octet-stream"})
    seconds = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"gateway answered {response.status_code}: {response.text[:500]}")
    return seconds, np.asarray(Image.open(io.BytesIO(response.content)))


def export_int8(checkpoint: Path, repository: Path, work: Path, max_batch_size: int, height: int, width: int):
    """Export the checkpoint as int8 into `repository` (`NAME_int8`), calibrated on rendered scenes."""
    from PIL import Image

    from export import ExportOptions, export_checkpoint
    from export.quantize import QuantizationOptions
    from training.config import find_config, load_config

    scenes = work / "scenes"
    scenes.mkdir()
    paths = []
    for index in range(4):  # 2 to calibrate on, 2 held out; other seeds than the timed image
        path = scenes / f"scene_{index}.png"
        Image.fromarray(test_image(height, width, seed=100 + index)).save(path)
        paths.append(path)
    (scenes / "calibration.txt").write_text("".join(f"{p}\n" for p in paths[:2]))
    (scenes / "held_out.txt").write_text("".join(f"{p}\n" for p in paths[2:]))  # no labels: agreement only
    options = QuantizationOptions(calibration_list=str(scenes / "calibration.txt"), calibration_images=2,
                                  val_list=str(scenes / "held_out.txt"), holdout_images=2,
                                  min_agreement=0.0, max_miou_drop=1.0)  # random weights: report, do not gate
    cfg = load_config(find_config(CONFIG), ["pretrained_backbone", "None"])
    return export_checkpoint(cfg, checkpoint, repository,
                             ExportOptions(max_batch_size=max_batch_size, simplify=False, int8=options),
                             name=f"{NAME}_int8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (each: one gateway request, one eager run)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--max-batch-size", type=int, default=4, help="exported model's max batch (tiles per call)")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                        help="int8: also serve an int8 export and time it beside fp32")
    parser.add_argument("--compare-arena", action="store_true",
                        help="also time a second gateway with ONNX Runtime's CPU arena set the other way "
                             "(SCENEPARSE_ORT_CPU_ARENA), request for request beside the first")
    args = parser.parse_args(argv)
    int8 = args.precision == "int8"

    import httpx
    import torch
    from PIL import Image

    from export import ExportOptions, export_checkpoint
    from serving.pipeline import window_origins
    from serving.settings import Settings
    from training.config import find_config, load_config

    torch.set_num_threads(args.threads)
    image = test_image(args.height, args.width)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    body = buffer.getvalue()
    cfg = load_config(find_config(CONFIG), ["pretrained_backbone", "None"])
    windows = len(window_origins(args.height, max(args.width, cfg.test_w), cfg.test_h, cfg.test_w))

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        tmp = Path(tmp)
        checkpoint = tmp / "pspnet50_random.pth"
        build_checkpoint(checkpoint)
        tick = time.perf_counter()
        result = export_checkpoint(find_config(CONFIG), checkpoint, tmp / "repository",
                                   ExportOptions(max_batch_size=args.max_batch_size, simplify=False),
                                   name=NAME)
        print(f"exported {NAME} v{result.version} in {time.perf_counter() - tick:.0f} s "
              f"(max |delta logits| vs eager {result.parity.get('worst', {}).get('max_abs_delta', 'n/a')})", file=sys.stderr)
        int8_result = None
        if int8:
            tick = time.perf_counter()
            int8_result = export_int8(checkpoint, tmp / "repository", tmp, args.max_batch_size, args.height, args.width)
            print(f"exported {NAME}_int8 v{int8_result.version} in {time.perf_counter() - tick:.0f} s", file=sys.stderr)
        eager = EagerOriginal(checkpoint, cfg, result.metadata.mean, result.metadata.std)
        load_before = os.getloadavg()[0]
        process, url = start_gateway(tmp / "repository", args.threads, tmp / "gateway.log")
        other = other_url = None
        if args.compare_arena:
            other_arena = not Settings.model_fields["ort_cpu_arena"].default
            other, other_url = start_gateway(tmp / "repository", args.threads, tmp / "gateway-arena.log",
                                             {"SCENEPARSE_ORT_CPU_ARENA": "1" if other_arena else "0"})
        other_times: list[float] = []
        try:
            with httpx.Client(timeout=600) as client:
                for _ in range(args.warmup):
                    gateway_request(client, url, body)
                    if other_url:
                        gateway_request(client, other_url, body)
                    if int8:
                        gateway_request(client, url, body, f"{NAME}_int8")
                    eager(image)
                gateway_times, eager_times, inference, int8_times, int8_inference = [], [], [], [], []
                for round_ in range(args.repeats):
                    before = stage_seconds(url)
                    seconds, gateway_label = gateway_request(client, url, body)
                    after = stage_seconds(url)
                    gateway_times.append(seconds)
                    inference.append(after["inference"] - before["inference"])
                    stages = {k: v - before.get(k, 0.0) for k, v in after.items()}
                    # Idle thread pools spin for a while after their work (OpenMP, ONNX Runtime):
                    # let them settle so that neither way runs beside the other's spinning.
                    time.sleep(1.0)
                    if other_url:
                        other_times.append(gateway_request(client, other_url, body)[0])
                        time.sleep(1.0)
                    if int8:
                        before = stage_seconds(url)
                        int8_seconds, int8_label = gateway_request(client, url, body, f"{NAME}_int8")
                        int8_times.append(int8_seconds)
                        int8_inference.append(stage_seconds(url)["inference"] - before["inference"])
                        time.sleep(1.0)
                    start = time.perf_counter()
                    eager_label = eager(image)
                    eager_times.append(time.perf_counter() - start)
                    time.sleep(1.0)
                    extra = f", int8 {int8_times[-1]:.2f} s (model {int8_inference[-1]:.2f} s)" if int8 else ""
                    print(f"  round {round_ + 1}: gateway {seconds:.2f} s (model {inference[-1]:.2f} s){extra}, "
                          f"eager {eager_times[-1]:.2f} s", file=sys.stderr)
        finally:
            for running in (process, other):
                if running is not None:
                    running.terminate()
                    running.wait(timeout=60)

    agreement = float((gateway_label == eager_label).mean())
    gateway_s, eager_s = statistics.median(gateway_times), statistics.median(eager_times)
    outside = [1.0 - m / g for m, g in zip(inference, gateway_times, strict=True)]
    load = os.getloadavg()[0]
    from sceneparse.cpu import describe_cpu

    print(f"\n{describe_cpu(args.threads)}")
    print(f"PSPNet-50, ADE20K config (150 classes, crop {cfg.test_h}), random weights; {args.width}x{args.height} "
          f"PNG, scale 1.0 + flip: {windows} windows x 2 = {2 * windows} crops; {args.threads} threads; "
          f"export max batch {args.max_batch_size}; {args.repeats} rounds (median, min); load average "
          f"{load_before:.1f} before, {load:.1f} after\n")
    header = f"{'way':<36} {'seconds':>15} {'speed-up':>9} {'outside model':>14}"
    print(header)
    print("-" * len(header))
    print(f"{'eager PyTorch, original test script':<36} {eager_s:>7.2f} ({min(eager_times):.2f}) {1.0:>9.2f} {'-':>14}")
    print(f"{'gateway, ONNX Runtime CPU, HTTP':<36} {gateway_s:>7.2f} ({min(gateway_times):.2f}) "
          f"{eager_s / gateway_s:>9.2f} {100 * statistics.median(outside):>13.1f}%")
    if other_times:
        other_s = statistics.median(other_times)
        way = f"gateway, ORT CPU arena {'on' if other_arena else 'off'}"
        print(f"{way:<36} {other_s:>7.2f} ({min(other_times):.2f}) {eager_s / other_s:>9.2f} {'-':>14}")
    if int8:
        int8_s = statistics.median(int8_times)
        int8_outside = statistics.median([1.0 - m / g for m, g in zip(int8_inference, int8_times, strict=True)])
        print(f"{'gateway, int8 (QDQ), ONNX Runtime CPU':<36} {int8_s:>7.2f} ({min(int8_times):.2f}) "
              f"{eager_s / int8_s:>9.2f} {100 * int8_outside:>13.1f}%")
    print("\nlast gateway request by stage (s): " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(stages.items())))
    print(f"label agreement gateway vs eager: {100 * agreement:.4f}% of pixels")
    if other_times:
        default = "on" if not other_arena else "off"
        print(f"ORT CPU arena {'on' if other_arena else 'off'} / {default} (the default), request for request: "
              f"{statistics.median(other_times) / gateway_s:.3f}x the latency (median), "
              f"{min(other_times) / min(gateway_times):.3f}x (min)")
    if int8:
        gate = int8_result.parity["int8"]
        print(f"label agreement int8 vs fp32: {100 * float((int8_label == gateway_label).mean()):.2f}% of pixels "
              f"(gateway fp32), {100 * float((int8_label == eager_label).mean()):.2f}% (eager); export's held-out "
              f"crops: {100 * gate['argmax_agreement']:.2f}% (random weights: a lower bound)")
        print(f"int8 / fp32 through the gateway: {gateway_s / int8_s:.2f}x faster; target int8 >= 2.5x faster than "
              f"eager: {eager_s / int8_s:.2f}x ({'met' if eager_s / int8_s >= 2.5 else 'NOT met'})")
    print(f"targets: speed-up >= 1.30 ({'met' if eager_s / gateway_s >= 1.3 else 'NOT met'}), "
          f"outside model <= 10% ({'met' if statistics.median(outside) <= 0.10 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
