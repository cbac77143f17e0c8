"""The first request after a hot reload against steady state, with and without warm-up (issue 10 item 5).

PSPNet-50 with the ADE20K config (150 classes, 473 crop) and random weights (latency does not
depend on the values; `--layers 18` for a quick run) is exported with `export_checkpoint` (what
`sceneparse export` runs) into a temporary model repository. For each setting of `warmup`
(SCENEPARSE_WARMUP=1, the default, and 0) a real `sceneparse serve` process serves it, and:

- after `--settle` untimed requests, `--reloads` times: `--repeats` timed requests of one 512x384
  PNG (scale 1.0 + flip: 2 windows x 2 = 4 crops), whose median is the steady state just before the
  reload; then a new version (a copy of the served one) is published, `POST /v1/admin/reload`
  swaps it in (timed: with warm-up the reload pays the first run instead of a user), and the first
  request to the new version is timed; the ratio first / that steady state is taken.

Target: the first request after a reload within 1.2x of steady state with warm-up. Both settings
run in the same process of this script, one after the other, on the same machine state; the
table gives the CPU model and ISA flags, and the load average (the machine may be shared).

    python bench/reload_latency.py                    # PSPNet-50, 3 reloads per setting
    python bench/reload_latency.py --layers 18 --reloads 5
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway import CONFIG, NAME, start_gateway, test_image  # noqa: E402 - needs ROOT on the path


def publish_copy(repository, name: str) -> int:
    """Publish a copy of the served version of `name` as its next version (what a retrain would land)."""
    from serving.repository import METADATA_FILE, ModelMetadata

    served = repository.served_version(name)
    source = repository.version_dir(name, served)
    meta = repository.read_metadata(name, served)

    def populate(staging: Path) -> ModelMetadata:
        for path in source.iterdir():
            if path.is_file() and path.name != METADATA_FILE:
                shutil.copyfile(path, staging / path.name)
        return ModelMetadata.from_dict(meta.to_dict())

    return repository.publish_version(name, populate)[0]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def segment_seconds(client, url: str, body: bytes, pid: int, expect_version: int | None = None) -> tuple[float, float]:
    """(wall seconds at the client, CPU seconds of the gateway process) of one request.

    CPU seconds count the work the request made the gateway do (first-run allocations and page
    faults included) and hardly depend on what else the machine runs; wall seconds do.
    """
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    response = client.post(f"{url}/v1/segment", params={"model": NAME, "output": "label"}, content=body,
                           headers={"Content-Type": "application/octet-stream"})
    seconds = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"gateway answered {response.status_code}: {response.text[:300]}")
    if expect_version is not None and int(response.headers["x-model-version"]) != expect_version:
        raise RuntimeError(f"expected version {expect_version}, got {response.headers['x-model-version']}")
    return seconds, cpu_seconds(pid) - cpu


def measure(repository, body: bytes, warmup: bool, args, work: Path) -> dict:
    """Steady-state latency and the first request after each reload, against one gateway process.

    Each reload is compared with the steady state just before it (the median of `--repeats`
    requests), so that a change in the machine's load between reloads does not pass for the
    reload's cost.
    """
    import httpx
    from tqdm import tqdm

    process, url = start_gateway(repository.root, args.threads, work / f"gateway-warmup-{int(warmup)}.log",
                                 {"SCENEPARSE_WARMUP": "1" if warmup else "0"})
    result = {"warmup": warmup, "steady": [], "reload": [], "first": [], "ratio": [], "cpu_ratio": []}
    try:
        with httpx.Client(timeout=600) as client:
            steps = args.settle + args.reloads * (args.repeats + 1)
            with tqdm(total=steps, desc=f"warm-up {'on' if warmup else 'off'}", unit="req", file=sys.stderr) as bar:
                for _ in range(args.settle):
                    segment_seconds(client, url, body, process.pid)
                    bar.update()
                for _ in range(args.reloads):
                    steady = []
                    for _ in range(args.repeats):
                        steady.append(segment_seconds(client, url, body, process.pid))
                        bar.update()
                    version = publish_copy(repository, NAME)
                    start = time.perf_counter()
                    answer = client.post(f"{url}/v1/admin/reload").json()
                    result["reload"].append(time.perf_counter() - start)
                    if answer["served"].get(NAME) != version:
                        raise RuntimeError(f"the reload did not swap in v{version}: {answer}")
                    first, first_cpu = segment_seconds(client, url, body, process.pid, expect_version=version)
                    bar.update()
                    result["steady"] += [wall for wall, _ in steady]
                    result["first"].append(first)
                    result["ratio"].append(first / statistics.median(wall for wall, _ in steady))
                    result["cpu_ratio"].append(first_cpu / statistics.median(cpu for _, cpu in steady))
    finally:
        process.terminate()
        process.wait(timeout=60)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=50, help="ResNet depth of the PSPNet (50; 18 for a quick run)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steady-state requests before each reload")
    parser.add_argument("--settle", type=int, default=2, help="untimed requests after the gateway starts")
    parser.add_argument("--reloads", type=int, default=3, help="reloads per setting (each: first request timed)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--max-batch-size", type=int, default=4, help="exported model's max batch (the warm-up batch)")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from export import ExportOptions, export_checkpoint
    from serving.pipeline import window_origins
    from serving.repository import ModelRepository
    from training.config import find_config, load_config
    from training.models import build_model

    torch.set_num_threads(args.threads)
    overrides = ["pretrained_backbone", "None", "layers", str(args.layers)]
    cfg = load_config(find_config(CONFIG), overrides)
    buffer = io.BytesIO()
    Image.fromarray(test_image(args.height, args.width)).save(buffer, format="PNG")
    body = buffer.getvalue()
    windows = len(window_origins(args.height, max(args.width, cfg.test_w), cfg.test_h, cfg.test_w))

    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        checkpoint = tmp / "pspnet_random.pth"
        torch.save({"state_dict": build_model(cfg, aux=False, backbone_weights=False).eval().state_dict()}, checkpoint)
        tick = time.perf_counter()
        export_checkpoint(cfg, checkpoint, tmp / "repository",
                          ExportOptions(max_batch_size=args.max_batch_size, simplify=False), name=NAME)
        print(f"exported {NAME} in {time.perf_counter() - tick:.0f} s", file=sys.stderr)
        del checkpoint
        repository = ModelRepository(tmp / "repository")
        load_before = os.getloadavg()[0]
        results = [measure(repository, body, warmup, args, tmp) for warmup in (True, False)]
        load_after = os.getloadavg()[0]

    from sceneparse.cpu import describe_cpu

    print(f"\n{describe_cpu(args.threads)}")
    print(f"PSPNet-{args.layers}, ADE20K config (150 classes, crop {cfg.test_h}), random weights; {args.width}x"
          f"{args.height} PNG, scale 1.0 + flip: {windows} windows x 2 = {2 * windows} crops; export max batch "
          f"{args.max_batch_size}; {args.threads} threads; {args.reloads} reloads per setting, each after "
          f"{args.repeats} steady requests; load average {load_before:.1f} before, {load_after:.1f} after\n")
    header = (f"{'warm-up':<8} {'steady s (median)':>18} {'reload s (median)':>18} {'first s (median, max)':>22} "
              f"{'first / steady, wall (median, max)':>35} {'first / steady, CPU (median, max)':>34}")
    print(header)
    print("-" * len(header))
    for result in results:
        steady, ratios, cpu = statistics.median(result["steady"]), result["ratio"], result["cpu_ratio"]
        print(f"{'on' if result['warmup'] else 'off':<8} {steady:>18.2f} {statistics.median(result['reload']):>18.2f} "
              f"{statistics.median(result['first']):>13.2f} {max(result['first']):>8.2f} "
              f"{statistics.median(ratios):>26.2f} {max(ratios):>8.2f} "
              f"{statistics.median(cpu):>25.2f} {max(cpu):>8.2f}")
    print("\nfirst / steady: the first request after a reload against the median of the requests just before it "
          "(wall time at the client; CPU time of the gateway process). Target: <= 1.2 with warm-up on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
