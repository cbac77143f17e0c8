"""Load on a real `sceneparse serve`: throughput, latency percentiles, 503 rate and peak RSS.

Starts the gateway (ONNX Runtime, CPU) over a model repository, then runs Locust headless
(bench/locustfile.py) with `--users` concurrent users for `--seconds`, each posting images of
mixed sizes (`--sizes`, default 320x240, 640x480, 1280x960 and 2048x1536) to /v1/segment with the
gateway's default limits, and samples the gateway's RSS every 0.1 s. Without --repository it builds
the test suite's tiny models (tests/fixtures/repository.py: PSPNet-18, 6 classes, crop 65) in a
temporary folder.

    python bench/load.py                                   # tiny model, 16 users, 30 s
    python bench/load.py --repository model_repository --model demo --users 32 --seconds 60

Locust and the gateway share the machine's cores: on 2 cores the figures include that contention.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni")


def cpu_header() -> str:
    """`CPU: <model>, <cores> cores; ISA: avx2 yes, avx512f no, ...` from /proc/cpuinfo."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", "unknown", "x86_64"):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    isa = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in ISA_FLAGS)
    return f"CPU: {model}, {os.cpu_count()} cores; ISA: {isa}"


def write_images(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    """One PNG per size: a synthetic street-like scene from the project's renderer."""
    from PIL import Image

    from training.data.synthetic import class_styles, render_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (width, height) in enumerate(sizes):
        image, _ = render_scene(class_styles(6), height, width, np.random.default_rng(index))
        path = folder / f"{width}x{height}.png"
        Image.fromarray(image).save(path, compress_level=3)
        paths.append(path)
    return paths


def start_gateway(repository: Path, model: str | None, log_path: Path, extra: dict[str, str]):
    import httpx

    from training.distributed import find_free_port

    port = find_free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCENEPARSE_")}
    env.update({"SCENEPARSE_REPOSITORY": str(repository), "SCENEPARSE_PORT": str(port),
                "SCENEPARSE_POLL_INTERVAL": "0", "SCENEPARSE_LOG_LEVEL": "warning", **extra})
    if model:
        env["SCENEPARSE_DEFAULT_MODEL"] = model
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


class RssSampler(threading.Thread):
    """Samples a process's VmRSS (KiB) every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self._halt = threading.Event()

    def read(self, field: str = "VmRSS") -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.samples.append(self.read())
            except OSError:
                return
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; nan for no values."""
    return float(np.percentile(values, q)) if values else float("nan")


def read_answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, help="model repository (default: build the tiny test models)")
    parser.add_argument("--model", help="model to load-test (default: the repository's first)")
    parser.add_argument("--users", type=int, default=16, help="concurrent Locust users (default: 16)")
    parser.add_argument("--seconds", type=int, default=30, help="duration of the load (default: 30)")
    parser.add_argument("--sizes", default="320x240,640x480,1280x960,2048x1536",
                        help="comma-separated WxH of the images the users send")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a gateway setting, e.g. --set WORKERS=4 (becomes SCENEPARSE_WORKERS)")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in item.lower().split("x")) for item in args.sizes.split(",")]
    extra = {f"SCENEPARSE_{key.upper()}": value for key, _, value in (item.partition("=") for item in args.set)}

    with tempfile.TemporaryDirectory(prefix="sceneparse-load-") as tmp:
        work = Path(tmp)
        repository = args.repository
        if repository is None:
            from tests.fixtures.repository import build_tiny_repository

            tick = time.perf_counter()
            (work / "build").mkdir()
            repository = build_tiny_repository(work / "repository", work / "build").root
            print(f"built the tiny test models in {time.perf_counter() - tick:.0f} s")
        images = write_images(work / "images", sizes)
        process, url = start_gateway(repository, args.model, work / "gateway.log", extra)
        try:
            import httpx

            for path in images:  # warm-up: one request per size
                httpx.post(f"{url}/v1/segment", params={"output": "label"}, content=path.read_bytes(), timeout=300)
            sampler = RssSampler(process.pid)
            idle_kib = sampler.read()
            sampler.start()
            answers_path = work / "answers.jsonl"
            env = dict(os.environ, SCENEPARSE_BENCH_IMAGES=str(work / "images"), SCENEPARSE_BENCH_OUT=str(answers_path))
            command = [sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
                       "--users", str(args.users), "--spawn-rate", str(args.users), "--run-time", f"{args.seconds}s",
                       "--host", url, "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "30"]
            locust = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.seconds + 240)
            sampler.stop()
            peak_kib = max([*sampler.samples, sampler.read("VmHWM") if process.poll() is None else 0])
            if not answers_path.exists():
                print(locust.stdout[-3000:], locust.stderr[-3000:], file=sys.stderr)
                return 1
            answers = read_answers(answers_path)
            models = httpx.get(f"{url}/v1/models", timeout=10).json()["models"]
        finally:
            process.terminate()
            process.wait(60)

    model = next((m for m in models if m["name"] == args.model), models[0]) if models else {}
    ok = [a["seconds"] * 1000 for a in answers if a["status"] == 200]
    refused = sum(1 for a in answers if a["status"] == 503)
    others = sorted({a["status"] for a in answers} - {200, 503})
    print()
    print(cpu_header())
    print(f"model: {model.get('name')} v{model.get('version')} ({model.get('arch')}{model.get('layers')}, "
          f"{model.get('num_classes')} classes, crop {model.get('crop_size')}, max batch {model.get('max_batch_size')}); "
          f"images {args.sizes} (output=label); gateway defaults{' + ' + ', '.join(args.set) if args.set else ''}")
    header = (f"{'users':>5} {'seconds':>7} {'answers':>7} {'200/s':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
              f"{'503 rate':>8} {'idle RSS MiB':>12} {'peak RSS MiB':>12}")
    print(header)
    print("-" * len(header))
    print(f"{args.users:>5} {args.seconds:>7} {len(answers):>7} {len(ok) / args.seconds:>6.2f} "
          f"{percentile(ok, 50):>7.0f} {percentile(ok, 95):>7.0f} {percentile(ok, 99):>7.0f} "
          f"{100 * refused / max(len(answers), 1):>7.1f}% {idle_kib / 1024:>12.0f} {peak_kib / 1024:>12.0f}")
    print("latency percentiles are of the 200 answers; 503 rate of all answers"
          + (f"; other statuses: {others}" if others else ""))
    by_size = {}
    for answer in answers:
        if answer["status"] == 200:
            by_size.setdefault(answer["size"], []).append(answer["seconds"] * 1000)
    print("200 answers by image size: " + ", ".join(
        f"{size} n={len(v)} p50 {percentile(v, 50):.0f} ms" for size, v in sorted(by_size.items(),
                                                                                  key=lambda kv: int(kv[0].split('x')[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
