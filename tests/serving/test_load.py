"""A bounded load test on a real `sceneparse serve` (issue 10): many concurrent clients with mixed image
sizes, stalled uploads and a hot reload in the middle. Only 200, 413 and 503-with-Retry-After come
back, no connection is dropped, the server's peak RSS stays under its bound, and it serves afterwards.

The bound is what admission promises: the RSS after warm-up, plus the cost budget, plus the uploads
(max_uploads x max_body_bytes), plus a fixed allowance for the interpreter's allocator and threads.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections import Counter

import httpx
import numpy as np

from tests.serving.conftest import encode, republish, scene_array
from tests.serving.gateway_process import GatewayProcess
from tests.serving.test_imaging import raw_png
from tests.serving.test_slow_clients import metric, read_reply, stalled_upload

CLIENTS = 24
DURATION = 14.0  # seconds of load
MAX_REQUESTS = 600  # per run, whatever the speed of the machine
STALLED = 6
COST_BUDGET_MB = 192
MAX_UPLOADS = 12
MAX_BODY = 4 * 1024 * 1024
ALLOWANCE_MB = 160  # allocator slack, thread stacks, ONNX Runtime scratch beyond the warm-up
KEY, ADMIN = "load-user-key", "load-admin-key"


def rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def requests_mix() -> list[tuple[str, bytes, dict[str, str]]]:
    """(kind, body, params): small, medium and large images, and requests too costly to admit."""
    blocks = scene_array(30, 40, seed=3)
    return [
        ("small", encode(scene_array(60, 80)), {}),
        ("medium", encode(np.kron(blocks, np.ones((10, 10, 1), np.uint8))), {"output": "json"}),  # 400x300
        ("large", encode(np.kron(blocks, np.ones((40, 40, 1), np.uint8))),  # 1600x1200
         {"max_side": "512", "output": "label"}),
        ("multiscale", encode(np.kron(blocks, np.ones((20, 20, 1), np.uint8))),  # 800x600
         {"scales": "0.75,1.0,1.25", "output": "overlay"}),
        # 6000x4000 from its header alone: over max_request_cost_mb at max_side 4096, never decoded.
        ("too_costly", raw_png(6000, 4000, 8, 2, rows=None), {"max_side": "4096", "scales": "1.0,2.0"}),
    ]


async def client_loop(url: str, mix, stop_at: float, budget: list[int], results: list, seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=60, headers={"X-API-Key": KEY}) as client:
        while time.monotonic() < stop_at and budget[0] > 0:
            budget[0] -= 1
            kind, body, params = rng.choice(mix)
            try:
                response = await client.post("/v1/segment", params=params, content=body)
            except httpx.HTTPError as exc:  # a dropped connection, a reset, a protocol error
                results.append((kind, "error", repr(exc), None, None))
                continue
            results.append((kind, response.status_code, response.headers.get("retry-after"),
                            response.headers.get("x-model-version"), response.json().get("error")
                            if response.status_code >= 400 else None))
            if response.status_code == 503:  # a well-behaved client waits about Retry-After
                await asyncio.sleep(float(response.headers.get("retry-after", 1)) * rng.uniform(0.3, 1.0))


async def run_load(server: GatewayProcess, repository, model_name: str) -> tuple[list, list[socket.socket], dict]:
    mix = requests_mix()
    results: list = []
    budget = [MAX_REQUESTS]
    started = time.monotonic()
    stop_at = started + DURATION
    clients = [asyncio.create_task(client_loop(server.url, mix, stop_at, budget, results, seed))
               for seed in range(CLIENTS)]
    events: dict = {}
    await asyncio.sleep(DURATION * 0.3)
    stalled = [stalled_upload(server.port, KEY) for _ in range(STALLED)]
    events["stalled_at"] = time.monotonic() - started
    await asyncio.sleep(DURATION * 0.15)
    version = await asyncio.to_thread(republish, repository, model_name)
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as admin:
        reload = await admin.post("/v1/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    events.update(reload_status=reload.status_code, reload=reload.json(), new_version=version,
                  reload_at=time.monotonic() - started)
    await asyncio.gather(*clients)
    return results, stalled, events


def test_mixed_load_with_stalled_uploads_and_a_hot_reload(writable_repository, model_name, tmp_path):
    server = GatewayProcess(
        writable_repository.root, tmp_path / "gateway.log", api_keys=KEY, admin_keys=ADMIN, workers=2,
        queue_size=8, max_uploads=MAX_UPLOADS, max_body_bytes=MAX_BODY, upload_idle_timeout=2,
        request_timeout=30, max_side_limit=4096, max_request_cost_mb=128, cost_budget_mb=COST_BUDGET_MB,
        retry_after=1, default_model=model_name)
    stalled: list[socket.socket] = []
    try:
        server.wait_ready()
        mix = requests_mix()
        for _, body, params in mix[:4]:  # warm-up: every kind of admitted request once
            warm = httpx.post(f"{server.url}/v1/segment", params=params, content=body, timeout=60,
                              headers={"X-API-Key": KEY})
            assert warm.status_code == 200, warm.text
        idle_kib = rss_kib(server.process.pid, "VmRSS")

        results, stalled, events = asyncio.run(run_load(server, writable_repository, model_name))

        peak_kib = rss_kib(server.process.pid, "VmHWM")
        statuses = Counter(status for _, status, *_ in results)
        errors = [entry for entry in results if entry[1] == "error"]
        assert not errors, errors[:5]
        assert set(statuses) <= {200, 413, 503}, statuses
        assert all(retry == "1" for _, status, retry, *_ in results if status == 503)
        assert statuses[200] >= 20, statuses
        # Too costly is 413 once its header is read (503 only when refused before, by a full upload slot).
        assert all(status in {413, 503} for kind, status, *_ in results if kind == "too_costly")
        assert any(kind == "too_costly" and status == 413 for kind, status, *_ in results)
        assert all(kind == "too_costly" for kind, status, *_ in results if status == 413)
        # The hot reload happened under load, and both versions answered.
        assert events["reload_status"] == 200 and events["reload"]["errors"] == {}, events
        versions = {version for _, status, _, version, _ in results if status == 200}
        assert {"1", str(events["new_version"])} <= versions, versions
        # Memory: under what admission promises.
        bound_kib = idle_kib + (COST_BUDGET_MB + MAX_UPLOADS * MAX_BODY // 2**20 + ALLOWANCE_MB) * 1024
        assert peak_kib <= bound_kib, (peak_kib // 1024, idle_kib // 1024, bound_kib // 1024)
        # The stalled uploads were dropped with 408; the gateway is alive and serves.
        for conn in stalled:
            reply = read_reply(conn)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:120]
        assert metric(server.url, "sceneparse_uploads_in_progress", KEY) == 0
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
        after = httpx.post(f"{server.url}/v1/segment", content=mix[0][1], timeout=60, headers={"X-API-Key": KEY})
        assert after.status_code == 200 and after.headers["x-model-version"] == str(events["new_version"])
        assert server.process.poll() is None and "Traceback" not in server.log()
        reasons = Counter(error for *_, error in results if error)
        print(f"load: {dict(statuses)} {dict(reasons)} in {DURATION:.0f} s by {CLIENTS} clients; RSS idle {idle_kib // 1024} MiB, "
              f"peak {peak_kib // 1024} MiB, bound {bound_kib // 1024} MiB; {events}")
    finally:
        for conn in stalled:
            conn.close()
        server.stop()
