"""`sceneparse predict` throughput: one process against a Ray Data job with 1 and 2 workers.

A model with random, seeded weights (by default the demo's PSPNet-18 config, `synthetic/
synthetic_pspnet18`: 6 classes, crop 97, base size 128; `--config ade20k/ade20k_pspnet50` for a
full-size one) is exported with the project's own export into a temporary model repository.
`--images` rendered synthetic scenes (JPEG, `--height` x `--width`) are then predicted, each
time into a fresh out folder, in a child process that never imports torch (as `sceneparse
predict` does not), by:

- one process:  `run_job` with the single-process executor (what `sceneparse predict` runs
  without --ray): one ONNX Runtime session with as many threads as this process has cores; it
  runs first and again last, and the ratios are taken against the faster of the two;
- Ray:          `run_job` with `RayExecutor` (what `sceneparse predict --ray` runs) on a local Ray
  instance started once beforehand (its start-up is printed, not counted): 1 worker with 1 CPU,
  1 worker with all CPUs, and one worker per CPU. Each Ray job's wall time includes starting
  its actors and loading the model in each, as a job on a running cluster does.

Every Ray job's files are compared byte for byte with the one-process run's. The table gives,
from one run each: wall seconds, images/s over the wall time and its ratio to the one-process
run; and "busy images/s", each worker's images over the seconds it spent on them (read, decode,
pipeline, write), summed over the workers: the job's rate with start-up (actors loading the
model) and scheduling gaps left out.

    python bench/batch_predict.py                          # 96 images 384x512, the demo-size model
    python bench/batch_predict.py --config ade20k/ade20k_pspnet50 --images 6
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Ray's workers import sceneparse's packages from this checkout too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")


def cpu_description() -> str:
    """`<model name>, <n> cores usable; ISA: avx2 avx512f ...` from /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in {"", platform.machine(), platform.processor()}:
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    isa = " ".join(flag for flag in ISA_FLAGS if flag in flags) or "none of " + ", ".join(ISA_FLAGS)
    return f"{model}, {len(os.sched_getaffinity(0))} cores usable; ISA: {isa}"


def build_repository(config_name: str, workdir: Path, max_batch_size: int) -> tuple[Path, str]:
    """Export the config's model (random weights, seed 0) into `workdir/repository`; returns (root, name)."""
    import torch

    from export import ExportOptions, export_checkpoint
    from training.config import find_config, load_config
    from training.data.synthetic import class_styles
    from training.models import build_model

    overrides = ["pretrained_backbone", "None"]
    if config_name.startswith("synthetic/"):
        styles = class_styles(6)
        names, colors = workdir / "names.txt", workdir / "colors.txt"
        names.write_text("\n".join(["background"] + [s.name for s in styles]) + "\n")
        colors.write_text("\n".join(f"{r} {g} {b}" for r, g, b in [(0, 0, 0)] + [s.color for s in styles]) + "\n")
        overrides += ["names_path", str(names), "colors_path", str(colors)]
    cfg = load_config(find_config(config_name), overrides)
    torch.manual_seed(0)
    model = build_model(cfg, aux=False, backbone_weights=False).eval()
    checkpoint = workdir / "random.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    config_file = workdir / "config.yaml"
    config_file.write_text(cfg.to_yaml())
    result = export_checkpoint(str(config_file), checkpoint, workdir / "repository",
                               ExportOptions(max_batch_size=max_batch_size, simplify=False), name="bench")
    return workdir / "repository", result.metadata.name  # "bench"


def write_images(folder: Path, count: int, height: int, width: int) -> None:
    import numpy as np
    from PIL import Image

    from training.data.synthetic import class_styles, render_scene

    folder.mkdir(parents=True)
    styles = class_styles(6)
    for index in range(count):
        image, _ = render_scene(styles, height, width, np.random.default_rng([7, index]))
        Image.fromarray(image).save(folder / f"scene{index:04d}.jpg", quality=90)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def measure(folder: Path, title: str) -> int:
    """Time the runs on `folder/repository` (model "bench") over `folder/images`; print the table.

    Runs in a process of its own that never imports torch, as `sceneparse predict` does not.
    """
    from serving.batch.inputs import collect_tasks
    from serving.batch.job import ModelSpec, PredictJob, run_job, run_local
    from serving.batch.outputs import OutputPlan
    from serving.batch.ray_job import RayExecutor, RayOptions, import_ray
    from serving.repository import ModelRepository
    from serving.segmentation import SegmentOptions

    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()[0]
    root = folder / "repository"
    meta = ModelRepository(root).read_metadata("bench")
    tasks = collect_tasks([folder / "images"])

    def timed(out: str, executor) -> tuple[float, float, float]:
        """(wall s, images/s over the wall time, the workers' images/s over their busy time, summed)."""
        job = PredictJob(ModelSpec(str(root), "bench", meta.version), folder / out, OutputPlan.for_kinds(["color"]),
                         SegmentOptions.defaults_for(meta))
        start = time.perf_counter()
        report = run_job(job, tasks, executor, progress=False)
        wall = time.perf_counter() - start
        assert report.written == len(tasks), report.summary()
        busy = sum(stats.images / stats.seconds for stats in report.workers.values())
        print(f"{out}: {wall:.1f} s\n{report.table()}", file=sys.stderr)
        return wall, len(tasks) / wall, busy

    # The one-process run goes first and last: on a shared machine the two differ by the noise.
    rows = [("one process (first)", f"1 x {cores} threads", *timed("one", run_local), "reference")]
    reference = files_of(folder / "one")
    ray = import_ray()
    tick = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING)
    ray_start = time.perf_counter() - tick
    try:
        for workers, cpus in ((1, 1), (1, cores), (cores, 1)):
            out = f"ray_{workers}x{cpus}"
            wall, rate, busy = timed(out, RayExecutor(RayOptions(None, workers, float(cpus))))
            same = "yes" if files_of(folder / out) == reference else "NO"
            rows.append((f"Ray, {workers} worker{'s' if workers > 1 else ''}", f"{workers} x {cpus} CPU",
                         wall, rate, busy, same))
    finally:
        ray.shutdown()
    wall, rate, busy = timed("one_again", run_local)
    same = "yes" if files_of(folder / "one_again") == reference else "NO"
    rows.append(("one process (last)", f"1 x {cores} threads", wall, rate, busy, same))
    # Ratios against the faster of the two one-process runs: the Ray rows are not flattered by noise.
    baseline = max(rows[0][3], rows[-1][3])
    busy_baseline = max(rows[0][4], rows[-1][4])

    print(f"\nsceneparse predict throughput: {title} (random weights, {meta.num_classes} classes, crop "
          f"{meta.crop_h}, base size {meta.base_size}, scales {meta.test_scales}, flip {meta.flip}), "
          f"{len(tasks)} JPEG images, color PNGs")
    print(f"CPU: {cpu_description()}; load average before: {load_before:.1f}, after: {os.getloadavg()[0]:.1f}")
    print(f"Ray {ray.__version__}: local instance start-up {ray_start:.1f} s (not counted below; actor start-up is); "
          "ratios against the faster one-process run\n")
    header = ("run", "workers x CPUs", "wall s", "images/s", "vs one process", "busy images/s", "vs one process",
              "same bytes")
    table = [header] + [(run, shape, f"{wall:.1f}", f"{rate:.2f}", f"{rate / baseline:.2f}x", f"{busy:.2f}",
                         f"{busy / busy_baseline:.2f}x", same)
                        for run, shape, wall, rate, busy, same in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for index, row in enumerate(table):
        print("  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    return 0 if all(row[-1] in {"yes", "reference"} for row in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="synthetic/synthetic_pspnet18", help="training config of the model")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--max-batch-size", type=int, default=4, help="exported model's max batch (crops per call)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the torch-free child
    args = parser.parse_args(argv)
    title = f"{args.config}, {args.width}x{args.height}"
    if args.measure:
        return measure(args.measure, title)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        tmp = Path(tmp)
        tick = time.perf_counter()
        build_repository(args.config, tmp, args.max_batch_size)
        write_images(tmp / "images", args.images, args.height, args.width)
        print(f"exported {args.config} and rendered {args.images} images in {time.perf_counter() - tick:.0f} s",
              file=sys.stderr)
        child = [sys.executable, __file__, "--measure", str(tmp), "--config", args.config,
                 "--width", str(args.width), "--height", str(args.height)]
        return subprocess.run(child, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
