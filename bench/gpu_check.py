"""One command on a machine with an NVIDIA GPU: does sceneparse's GPU story hold? Prints one table.

    python bench/gpu_check.py                  # about 3-5 minutes on one GPU; no other installs
    python bench/gpu_check.py --batch-size 2   # windows per forward pass in the test protocol

Needs PyTorch with CUDA and the project's own code only; random weights (seeded), no downloads.
Rows of the table:

1. The test protocol (`sceneparse test`: the serving pipeline with `training.runners.TorchRunner`,
   scale 1.0 + flip, sliding windows) in eager PyTorch on CUDA, fp32 and fp16 (autocast), for
   PSPNet-50 (ADE20K, 473 crop, a 512x384 image), PSPNet-101 (Cityscapes, 713 crop, a
   2048x1024 image) and PSANet-50 (ADE20K, 465 crop). The process is capped at 4 GiB with
   `torch.cuda.set_per_process_memory_fraction` (a 4 GB card; the CUDA context itself, some
   300-500 MiB, is outside the cap): seconds per image (median of 3), peak memory allocated and
   reserved, whether it fit, and the fp16 labels' agreement with fp32.
2. A training step with AMP (fp16 autocast, GradScaler) and SyncBatchNorm under DDP, started by
   torchrun with 1 process and the nccl backend (`training.train.train_one_epoch` on random
   batches of 2 at 473, PSPNet-50 with its aux head): seconds per step and peak memory.
3. TorchScript: the export module traced on CUDA, saved, reloaded on CUDA and compared with eager
   fp32 (TF32 off for both): max |delta logits| and argmax agreement (export.verify's gate).
4. ONNX fp16 export's parity on CUDA (ONNX Runtime's CUDA provider) against eager fp32, and the
   test protocol's latency through ONNX Runtime CUDA (fp32, fp16) with the gateway's session
   options (3 GiB arena): only when `onnxruntime-gpu` is importable, else a row says it was
   skipped.

Without a CUDA GPU the script exits at once with status 2 and says so (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAP_BYTES = 4 * 1024**3
MIB = 1024**2
# (label, shipped config, image (h, w)): the image sizes of the datasets the configs are for.
PROTOCOL_MODELS = (
    ("PSPNet-50", "ade20k/ade20k_pspnet50", (384, 512)),
    ("PSPNet-101", "cityscapes/cityscapes_pspnet101", (1024, 2048)),
    ("PSANet-50", "ade20k/ade20k_psanet50", (384, 512)),
)
TRAIN_CONFIG = "ade20k/ade20k_pspnet50"
EXPORT_CONFIG = "ade20k/ade20k_pspnet50"


@dataclass
class Row:
    check: str
    model: str
    setting: str
    seconds: str = "-"
    peak: str = "-"
    result: str = ""


def no_gpu_message(torch) -> str | None:
    """Why this machine cannot run the check (None when a CUDA GPU is usable)."""
    if not torch.cuda.is_available():
        cuda = torch.version.cuda or "none (CPU-only build)"
        return (f"no CUDA GPU is visible to PyTorch {torch.__version__} (CUDA build: {cuda}); "
                "run this on a machine with an NVIDIA GPU and its driver")
    return None


def load_cfg(name: str, *overrides: str):
    from training.config import find_config, load_config

    return load_config(find_config(name), ["pretrained_backbone", "None", *overrides])


def build(cfg, aux: bool = False, seed: int = 0):
    import torch

    from training.models import build_model

    torch.manual_seed(seed)
    return build_model(cfg, aux=aux, backbone_weights=False)


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    from training.data.synthetic import class_styles, render_scene

    return render_scene(class_styles(6), height, width, np.random.default_rng(seed))[0]


def mib(value: int) -> str:
    return f"{value / MIB:.0f}"


# --- 1. the test protocol under a 4 GiB cap ----------------------------------------------------
def protocol_rows(batch_size: int, repeats: int) -> list[Row]:
    import torch

    from serving.pipeline import InferenceOptions, PipelineStats, predict_label
    from training.evaluate import pipeline_spec
    from training.runners import TorchRunner

    rows = []
    for label, config_name, (height, width) in PROTOCOL_MODELS:
        cfg = load_cfg(config_name)
        spec = pipeline_spec(cfg)
        image = scene(height, width)
        model = build(cfg).eval()
        labels: dict[str, np.ndarray] = {}
        for precision in ("fp32", "fp16"):
            setting = f"crop {spec.crop_h}, {width}x{height}, batch {batch_size}, {precision}" + \
                (" autocast" if precision == "fp16" else "")
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            try:
                runner = TorchRunner(model, "cuda", max_batch_size=batch_size,
                                     amp="fp16" if precision == "fp16" else None)
                stats = PipelineStats()
                labels[precision] = predict_label(image, runner, spec, InferenceOptions(flip=True), stats)  # warm-up
                times = []
                for _ in range(repeats):
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    predict_label(image, runner, spec, InferenceOptions(flip=True))
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
            except torch.cuda.OutOfMemoryError as exc:
                rows.append(Row("test protocol, eager", label, setting, result=f"OUT OF MEMORY under 4 GiB: {str(exc)[:80]}"))
                continue
            finally:
                torch.cuda.synchronize()
            peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
            result = f"fits 4 GiB ({mib(reserved)} MiB reserved); {stats.tiles} crops"
            if precision == "fp16" and "fp32" in labels:
                result += f"; labels = fp32 on {100 * float((labels['fp16'] == labels['fp32']).mean()):.2f}%"
            rows.append(Row("test protocol, eager", label, setting, f"{statistics.median(times):.3f}",
                            mib(peak), result))
        model.cpu()
        del model
        torch.cuda.empty_cache()
    return rows


# --- 2. a training step: AMP + SyncBN, torchrun 1 process, nccl ---------------------------------
def train_worker(output: str, steps: int) -> None:
    """Runs under torchrun: one DDP process on GPU 0 with SyncBatchNorm and AMP; writes JSON to `output`."""
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset

    from training.distributed import init_distributed_mode
    from training.syncbn import convert_sync_batchnorm
    from training.train import train_one_epoch

    state = init_distributed_mode([0], dist_backend="nccl")
    cfg = load_cfg(TRAIN_CONFIG, "epochs", "2")
    model = convert_sync_batchnorm(build(cfg, aux=True), state.device).to(state.device)
    sync_layers = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    model = DistributedDataParallel(model, device_ids=[state.device.index])
    crop = int(cfg.train_h)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2 * steps, 3, crop, crop, generator=generator)
    target = torch.randint(0, int(cfg.classes), (2 * steps, crop, crop), generator=generator)
    target[:, :16] = 255  # some ignored pixels, as in real labels
    loader = DataLoader(TensorDataset(images, target), batch_size=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(cfg.base_lr), momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    criterion = nn.CrossEntropyLoss(ignore_index=255)
    common = dict(device=state.device, max_iter=2 * len(loader), scaler=scaler, autocast_dtype=torch.float16,
                  channels_last=False)
    train_one_epoch(model, criterion, optimizer, loader, 0, cfg, **common)  # warm-up: cuDNN picks algorithms
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    figures = train_one_epoch(model, criterion, optimizer, loader, 1, cfg, **common)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / len(loader)
    result = {"seconds_per_step": seconds, "peak": torch.cuda.max_memory_allocated(), "loss": figures["loss"],
              "sync_layers": sync_layers, "backend": torch.distributed.get_backend(),
              "world_size": torch.distributed.get_world_size(), "scale": scaler.get_scale()}
    Path(output).write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def train_row(work: Path, steps: int) -> Row:
    output = work / "train_step.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               str(Path(__file__).resolve()), "--train-worker", str(output), "--steps", str(steps)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    setting = "batch 2 x 473, fp16 autocast + GradScaler, SyncBN, DDP (torchrun, 1 process)"
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return Row("train step, AMP + SyncBN", "PSPNet-50 + aux", setting, result="FAILED: no result in 300 s")
    if done.returncode != 0 or not output.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return Row("train step, AMP + SyncBN", "PSPNet-50 + aux", setting,
                   result=f"FAILED (exit {done.returncode}): {tail[0][:120]}")
    figures = json.loads(output.read_text())
    loss_ok = np.isfinite(figures["loss"])
    return Row("train step, AMP + SyncBN", "PSPNet-50 + aux", setting, f"{figures['seconds_per_step']:.3f}",
               mib(figures["peak"]),
               f"{figures['backend']}, world size {figures['world_size']}, {figures['sync_layers']} SyncBatchNorm "
               f"layers; loss {figures['loss']:.3f} ({'finite' if loss_ok else 'NOT FINITE'}); grad scale "
               f"{figures['scale']:g}")


# --- 3./4. exports on CUDA ------------------------------------------------------------------------
def _reference(model, crop: int):
    """Eager fp32 CUDA logits at the crop (the original zoom), TF32 off, on export.verify's probe batch."""
    import torch

    from export.verify import probe_inputs
    from training.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    batch = probe_inputs(crop, crop, 2, IMAGENET_MEAN, IMAGENET_STD)["structured_b2"]
    module = model.cuda().eval()
    module.zoom_factor = 8
    with torch.inference_mode():
        expected = module(torch.from_numpy(batch).cuda()).float().cpu().numpy()
    return batch, expected


def export_rows(work: Path) -> list[Row]:
    import torch

    from export.graph import export_module
    from export.onnx_file import write_onnx
    from export.torchscript_file import write_torchscript
    from export.verify import FP16_MIN_ARGMAX_AGREEMENT, compare_logits

    rows = []
    cfg = load_cfg(EXPORT_CONFIG)
    crop = int(cfg.test_h)
    model = build(cfg).eval()
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # parity, not speed
    try:
        module = export_module(model, crop, crop, logits="crop").cuda()  # fold/fix on the CPU, then CUDA
        batch, expected = _reference(model, crop)
        example = torch.zeros(2, 3, crop, crop, device="cuda")
        tick = time.perf_counter()
        path = work / "model.pt"
        try:
            write_torchscript(module, example, path)
            scripted = torch.jit.load(str(path), map_location="cuda").eval()
            with torch.inference_mode():
                got = scripted(torch.from_numpy(batch).cuda()).float().cpu().numpy()
            figures = compare_logits(expected, got)
            passed = figures["tolerance_used"] <= 1.0 and figures["decisive_agreement"] == 1.0
            rows.append(Row("TorchScript traced + run on CUDA", "PSPNet-50", f"crop {crop}, batch 2, fp32",
                            f"{time.perf_counter() - tick:.1f}", "-",
                            f"max |delta| {figures['max_abs_delta']:.2e} (logits up to {figures['max_abs_logit']:.1f}), "
                            f"argmax {100 * figures['argmax_agreement']:.3f}%: {'PASS' if passed else 'FAIL'} (fp32 gate)"))
        except Exception as exc:  # a row, not a crash: the other checks still run
            rows.append(Row("TorchScript traced + run on CUDA", "PSPNet-50", f"crop {crop}", result=f"FAILED: {exc!s:.150}"))

        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        providers = ort.get_available_providers() if ort else []
        if "CUDAExecutionProvider" not in providers:
            why = "onnxruntime is not installed" if ort is None else \
                f"onnxruntime {ort.__version__} has no CUDA provider ({', '.join(providers)})"
            rows.append(Row("ONNX fp16 export on CUDA (ORT)", "PSPNet-50", f"crop {crop}",
                            result=f"skipped: {why}; pip install onnxruntime-gpu to measure it"))
            return rows
        rows += onnx_cuda_rows(ort, model, module, crop, batch, expected, work, FP16_MIN_ARGMAX_AGREEMENT,
                               export_module, write_onnx, compare_logits)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return rows


def onnx_cuda_rows(ort, model, module32, crop, batch, expected, work, min_fp16, export_module, write_onnx,
                   compare_logits) -> list[Row]:
    import torch

    from serving.backends.onnxruntime import cuda_provider_options
    from serving.pipeline import InferenceOptions, predict_label
    from training.evaluate import pipeline_spec

    rows = []
    sessions = {}
    for precision in ("fp32", "fp16"):
        tick = time.perf_counter()
        path = work / f"model_{precision}.onnx"
        try:
            module = module32 if precision == "fp32" else export_module(model.cpu(), crop, crop, logits="crop",
                                                                        fp16=True).cuda()
            dtype = torch.float16 if precision == "fp16" else torch.float32
            write_onnx(module, torch.zeros(2, 3, crop, crop, dtype=dtype, device="cuda"), path)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), options, providers=[
                ("CUDAExecutionProvider", cuda_provider_options(3072)), "CPUExecutionProvider"])
            sessions[precision] = session
            got = session.run(None, {"input": batch.astype(np.float16 if precision == "fp16" else np.float32)})[0]
            figures = compare_logits(expected, np.asarray(got, dtype=np.float32))
            if precision == "fp16":
                verdict = f"PASS (>= {100 * min_fp16:.1f}%)" if figures["argmax_agreement"] >= min_fp16 else \
                    f"FAIL (< {100 * min_fp16:.1f}%; random weights: indicative)"
            else:
                verdict = "PASS" if figures["tolerance_used"] <= 1.0 and figures["decisive_agreement"] == 1.0 else "FAIL"
            rows.append(Row(f"ONNX {precision} export on CUDA (ORT)", "PSPNet-50", f"crop {crop}, batch 2",
                            f"{time.perf_counter() - tick:.1f}", "-",
                            f"vs eager fp32: max |delta| {figures['max_abs_delta']:.2e}, argmax "
                            f"{100 * figures['argmax_agreement']:.3f}%: {verdict}"))
        except Exception as exc:
            rows.append(Row(f"ONNX {precision} export on CUDA (ORT)", "PSPNet-50", f"crop {crop}",
                            result=f"FAILED: {exc!s:.150}"))

    cfg = load_cfg(EXPORT_CONFIG)
    spec = pipeline_spec(cfg)
    image = scene(384, 512)
    for precision, session in sessions.items():
        dtype = np.float16 if precision == "fp16" else np.float32

        class Runner:
            max_batch_size = 4

            def __call__(self, windows, session=session, dtype=dtype):
                return np.asarray(session.run(None, {"input": windows.astype(dtype)})[0], dtype=np.float32)

        predict_label(image, Runner(), spec, InferenceOptions(flip=True))  # warm-up
        times = []
        for _ in range(3):
            start = time.perf_counter()
            predict_label(image, Runner(), spec, InferenceOptions(flip=True))
            times.append(time.perf_counter() - start)
        rows.append(Row("test protocol, ORT CUDA", "PSPNet-50", f"crop {crop}, 512x384, batch 4, {precision}",
                        f"{statistics.median(times):.3f}", "-", "gateway session options, arena capped at 3 GiB"))
    return rows


def print_table(rows: list[Row], header: str) -> None:
    columns = (("check", "check"), ("model", "model"), ("setting", "setting"), ("seconds", "s/image|step"),
               ("peak", "peak MiB"), ("result", "result"))
    widths = {key: max(len(title), *(len(getattr(r, key)) for r in rows)) for key, title in columns}
    widths["result"] = len("result")
    print(header)
    line = "  ".join(f"{title:<{widths[key]}}" for key, title in columns)
    print(line)
    print("-" * max(len(line), 100))
    for r in rows:
        print("  ".join(f"{getattr(r, key):<{widths[key]}}" for key, _ in columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass in the test protocol")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the test protocol per row")
    parser.add_argument("--steps", type=int, default=5, help="training steps timed")
    parser.add_argument("--train-worker", default=None, help=argparse.SUPPRESS)  # set when torchrun starts us
    args = parser.parse_args(argv)

    import torch

    if args.train_worker:
        train_worker(args.train_worker, args.steps)
        return 0
    problem = no_gpu_message(torch)
    if problem:
        print(f"bench/gpu_check.py: {problem}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    props = torch.cuda.get_device_properties(0)
    fraction = min(1.0, CAP_BYTES / props.total_memory)
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    header = (f"GPU: {props.name}, {props.total_memory / 1024**3:.1f} GiB, capped at "
              f"{fraction * props.total_memory / 1024**3:.1f} GiB (set_per_process_memory_fraction {fraction:.3f}); "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; "
              f"TF32 convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'} (off for parity rows); "
              "random weights")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        print("[gpu_check] test protocol ...", file=sys.stderr, flush=True)
        rows += protocol_rows(args.batch_size, args.repeats)
        print("[gpu_check] training step (torchrun) ...", file=sys.stderr, flush=True)
        rows.append(train_row(Path(tmp), args.steps))
        print("[gpu_check] exports ...", file=sys.stderr, flush=True)
        rows += export_rows(Path(tmp))
    print_table(rows, header + f"; whole check {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
