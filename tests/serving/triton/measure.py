"""Measure the Triton path on this machine and print a table (not a test).

    .venv/bin/python -m tests.serving.triton.measure [--repository DIR] [--model NAME] [--repeats 20]

Starts the harness tritonserver over DIR (default: a stand-in conv net built in a temp dir) and
reports: start-to-ready time, per-batch latency through Triton (HTTP and gRPC) against the same
model.onnx in an in-process ONNX Runtime session, how long a runner takes to raise
BackendUnavailable after the server is killed, and how long until the same runner works again
after a restart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.backends.base import BackendUnavailable
from serving.backends.triton import TritonBackend
from serving.repository import ModelRepository
from tests.serving.triton.harness import TritonServer, tritonserver_binary


def median_ms(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="model repository (default: build a stand-in)")
    parser.add_argument("--model", help="model name (default: the first)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if not tritonserver_binary().is_file():
        print(f"error: {tritonserver_binary()} missing; run scripts/fetch_tritonserver.sh", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="triton-measure-"))
    if args.repository:
        repository = ModelRepository(args.repository)
    else:
        from tests.serving.triton.tiny_model import publish_tiny_model

        repository = ModelRepository(work / "repository")
        publish_tiny_model(repository)
    name = args.model or repository.list_models()[0]
    meta = repository.read_metadata(name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(repository.model_file(name, meta.version)), options,
                                   providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).normal(size=(meta.max_batch_size, 3, meta.crop_h, meta.crop_w))
    batch = batch.astype(np.float32)

    server = TritonServer(repository, work / "server")
    server.prepare()
    start = time.perf_counter()
    server.start()
    rows = [("tritonserver start to ready (all models loaded)", f"{time.perf_counter() - start:.2f} s")]
    try:
        local = median_ms(lambda: session.run([meta.output_name], {meta.input_name: batch}), args.repeats)
        rows.append((f"in-process ONNX Runtime, batch {len(batch)}, median", f"{local:.1f} ms"))
        backends = {p: TritonBackend(server.url(p), p) for p in ("http", "grpc")}
        for protocol, backend in backends.items():
            runner = backend.open(repository, meta)
            took = median_ms(lambda runner=runner: runner(batch), args.repeats)
            rows.append((f"Triton {protocol}, batch {len(batch)}, median", f"{took:.1f} ms (+{took - local:.1f} ms)"))
        server.kill()
        for protocol, backend in backends.items():
            start = time.perf_counter()
            try:
                backend.open(repository, meta)(batch)
            except BackendUnavailable:
                rows.append((f"{protocol}: killed server -> BackendUnavailable", f"{1000 * (time.perf_counter() - start):.1f} ms"))
        start = time.perf_counter()
        server.start()
        restarted = time.perf_counter() - start
        for protocol, backend in backends.items():
            begin = time.perf_counter()
            backend.open(repository, meta)(batch)
            rows.append((f"{protocol}: first request after restart (server ready after {restarted:.2f} s)",
                         f"{1000 * (time.perf_counter() - begin):.1f} ms"))
        for backend in backends.values():
            backend.close()
    finally:
        server.stop()
    print(f"model {name} v{meta.version}: crop {meta.crop_h}x{meta.crop_w}, {meta.num_classes} classes")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
