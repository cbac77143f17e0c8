"""Memory of a real `sceneparse serve` per request: idle RSS after warm-up, peak RSS growth, latency.

PSPNet-50 with the ADE20K config (150 classes, crop 473, base_size 512, single scale with flip),
random weights seeded as in bench/gateway.py (memory and latency do not depend on the values),
exported by `export.export_checkpoint` (what `sceneparse export` runs) with its default
max batch 8. The checkpoint and the repository are cached under .cache/bench/pspnet50_ade20k_random
(exporting takes minutes on 2 cores); --rebuild makes them again.

A `sceneparse serve` process with its defaults (2 workers, max_side 1024, ONNX Runtime on all
cores; only the deadline is raised to 900 s, since a 2048x2048 request takes about a minute on 2
cores) serves it; its VmRSS is sampled from /proc every 20 ms. After one warm-up request (512x384)
and a few seconds of quiet, "idle" is its RSS; each row then sends its requests (JPEGs of a
rendered scene, `output=json`) and reports the peak RSS above the RSS just before them, and the
client-side latency (for concurrent requests: the slowest).

    python bench/memory.py                      # the gateway's default ONNX Runtime arena setting
    python bench/memory.py --arena both         # arena off and on, one gateway after the other
    python bench/memory.py --multi-scale        # adds a 6-scale row (36 crops, several minutes)

Targets (issue 10): idle RSS after warm-up <= 2 GB; two concurrent 2048x2048 requests
(max_side 2048) peak <= 1.5 GB above idle; a 4096x3072 request within 20% of a 1024x768 one.
Run it alone (flock /tmp/sceneparse-bench.lock): another process's load changes latency, not memory.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway import CONFIG, build_checkpoint, test_image  # noqa: E402
from bench.load import RssSampler, start_gateway  # noqa: E402

NAME = "bench_pspnet50"
CACHE = ROOT / ".cache" / "bench" / "pspnet50_ade20k_random"
GB = 1e9
MIB = 1024 * 1024
MULTI_SCALES = "0.5,0.75,1.0,1.25,1.5,1.75"


def cached_repository(rebuild: bool = False) -> Path:
    """The exported model repository (built on first use; an unfinished build is never used)."""
    repository = CACHE / "repository"
    if repository.is_dir() and not rebuild:
        return repository
    from export import ExportOptions, export_checkpoint
    from training.config import find_config

    CACHE.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pspnet50-", dir=CACHE.parent))
    checkpoint = work / "pspnet50_random.pth"
    print("building PSPNet-50 (ADE20K config, random weights) and exporting it ...", file=sys.stderr)
    build_checkpoint(checkpoint)
    export_checkpoint(find_config(CONFIG), checkpoint, work / "repository", ExportOptions(simplify=False), name=NAME)
    checkpoint.unlink()
    if CACHE.exists():
        shutil.rmtree(CACHE)
    work.rename(CACHE)  # atomic: a killed build leaves only its temporary folder
    return repository


@dataclass(frozen=True)
class Case:
    width: int
    height: int
    requests: int = 1
    max_side: int | None = None  # None: the gateway's default (1024)
    scales: str | None = None  # None: the model's (1.0)

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}" + (f" x{self.requests}" if self.requests > 1 else "")


@dataclass
class Row:
    case: Case
    before: int  # RSS bytes just before
    peak: int
    after: int
    seconds: float
    crops: int


def jpeg_bytes(width: int, height: int) -> bytes:
    """The rendered scene as a JPEG (quality 90): as a PNG, its texture makes 4096x3072 over the 20 MB body limit."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(test_image(height, width)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def settle(sampler: RssSampler, seconds: float = 3.0) -> int:
    """RSS once the process has been idle for `seconds` (thread pools stop spinning, frees land)."""
    time.sleep(seconds)
    return sampler.read() * 1024


def run_case(client, url: str, case: Case, sampler: RssSampler) -> Row:
    body = jpeg_bytes(case.width, case.height)
    params = {"output": "json"}
    if case.max_side:
        params["max_side"] = str(case.max_side)
    if case.scales:
        params["scales"] = case.scales
    before = settle(sampler)
    start_index = len(sampler.samples)
    results: list[tuple[float, int]] = []
    errors: list[str] = []

    def one() -> None:
        tick = time.perf_counter()
        response = client.post(f"{url}/v1/segment", params=params, content=body,
                               headers={"Content-Type": "application/octet-stream"})
        if response.status_code != 200:
            errors.append(f"{response.status_code}: {response.text[:300]}")
            return
        results.append((time.perf_counter() - tick, int(response.json()["tiles"])))

    threads = [threading.Thread(target=one) for _ in range(case.requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{case.label}: the gateway answered {errors[0]}")
    peak = max(sampler.samples[start_index:] + [sampler.read()]) * 1024
    return Row(case, before, peak, settle(sampler, 1.0), max(s for s, _ in results), results[0][1])


def measure(repository: Path, arena: str, cases: list[Case], work: Path,
            env: dict[str, str] | None = None) -> tuple[int, list[Row]]:
    """(idle RSS after warm-up, rows) against one gateway process with the given arena setting."""
    import httpx

    extra = {"SCENEPARSE_REQUEST_TIMEOUT": "900", **(env or {})}
    if arena != "default":
        extra["SCENEPARSE_ORT_CPU_ARENA"] = "1" if arena == "on" else "0"
    process, url = start_gateway(repository, NAME, work / f"gateway-{arena}.log", extra)
    sampler = RssSampler(process.pid, interval=0.02)
    sampler.start()
    try:
        with httpx.Client(timeout=900) as client:
            warm = client.post(f"{url}/v1/segment", params={"output": "label"}, content=jpeg_bytes(512, 384))
            if warm.status_code != 200:
                raise RuntimeError(f"warm-up answered {warm.status_code}: {warm.text[:300]}")
            idle = settle(sampler, 5.0)
            rows = []
            for case in cases:
                rows.append(run_case(client, url, case, sampler))
                print(f"  arena {arena}: {case.label} done in {rows[-1].seconds:.1f} s", file=sys.stderr)
    finally:
        sampler.stop()
        process.terminate()
        process.wait(timeout=60)
    return idle, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arena", choices=("default", "on", "off", "both"), default="default",
                        help="ONNX Runtime CPU arena (SCENEPARSE_ORT_CPU_ARENA); both: off, then on")
    parser.add_argument("--multi-scale", action="store_true", help=f"add a 1024x768 row at scales {MULTI_SCALES}")
    parser.add_argument("--rebuild", action="store_true", help="export the model again")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the gateway process (repeatable)")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)

    from sceneparse.cpu import describe_cpu
    from serving.settings import Settings

    repository = cached_repository(args.rebuild)
    # The first three are the targets' rows (their summary below reads them in this order).
    cases = [Case(1024, 768), Case(4096, 3072), Case(2048, 2048, requests=2, max_side=2048)]
    if args.multi_scale:
        cases.append(Case(1024, 768, scales=MULTI_SCALES))
    arenas = ["off", "on"] if args.arena == "both" else [args.arena]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for arena in arenas:
            results[arena] = measure(repository, arena, cases, Path(tmp), env)

    default_arena = "on" if Settings.model_fields["ort_cpu_arena"].default else "off"
    print(f"\n{describe_cpu(os.cpu_count())}")
    print(f"PSPNet-50, ADE20K config (150 classes, crop 473, base_size 512), random weights, export max batch 8; "
          f"a real `sceneparse serve` with its defaults (2 workers, max_side 1024, ONNX Runtime CPU arena "
          f"{default_arena} by default); RSS of the gateway process sampled every 20 ms; output=json\n")
    header = (f"{'arena':<6} {'model':<10} {'image':<14} {'max_side':>8} {'scales':>7} {'crops':>5} {'idle GB':>8} "
              f"{'before GB':>9} {'peak growth GB':>14} {'after GB':>8} {'latency s':>9}")
    print(header)
    print("-" * len(header))
    for arena, (idle, rows) in results.items():
        for row in rows:
            scales = "6" if row.case.scales else "1"
            print(f"{arena:<6} {'PSPNet-50':<10} {row.case.label:<14} {row.case.max_side or 1024:>8} {scales:>7} "
                  f"{row.crops:>5} {idle / GB:>8.2f} {row.before / GB:>9.2f} {(row.peak - row.before) / GB:>14.2f} "
                  f"{row.after / GB:>8.2f} {row.seconds:>9.1f}")
    print()
    for arena, (idle, rows) in results.items():
        by_case = {row.case: row for row in rows}
        small, large, pair = (by_case[case] for case in cases[:3])
        ratio = (large.peak - large.before) / max(1, small.peak - small.before)
        print(f"arena {arena}: idle {idle / GB:.2f} GB (target <= 2: {'met' if idle <= 2 * GB else 'NOT met'}); "
              f"2 x 2048x2048 peak {(pair.peak - idle) / GB:.2f} GB above idle (target <= 1.5: "
              f"{'met' if pair.peak - idle <= 1.5 * GB else 'NOT met'}); 4096x3072 / 1024x768 growth "
              f"{ratio:.2f} (target <= 1.20: {'met' if ratio <= 1.2 else 'NOT met'})")
    if len(results) == 2:
        off, on = (statistics_of(results[a][1]) for a in ("off", "on"))
        print(f"latency arena off / on, same rows: {off / on:.3f} (sum of {len(cases)} rows' seconds; one gateway "
              "after the other, so other load on the machine shows: bench/gateway.py --compare-arena interleaves them)")
    return 0


def statistics_of(rows: list[Row]) -> float:
    return float(np.sum([row.seconds for row in rows]))


if __name__ == "__main__":
    sys.exit(main())
