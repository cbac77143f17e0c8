"""Slow clients on a real uvicorn process (issue 10): a stalled upload holds no worker or queue place,
uploads have their own cap and an inactivity timeout (408) separate from the request's deadline."""

from __future__ import annotations

import re
import socket
import statistics
import time

import httpx

from tests.serving.gateway_process import GatewayProcess

STALLED = 12


def metric(url: str, name: str, key: str | None = None) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10, headers={"X-API-Key": key} if key else None).text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def stalled_upload(port: int, key: str | None = None) -> socket.socket:
    """A client that sends its headers (with `key` as X-API-Key) and 4 bytes of a 5000-byte body, then nothing."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=60)
    auth = f"X-API-Key: {key}\r\n".encode() if key else b""
    conn.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n" + auth
                 + b"Content-Length: 5000\r\n\r\n\x89PNG")
    return conn


def read_reply(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (its 408 says Connection: close)."""
    reply = b""
    try:
        while data := conn.recv(65536):
            reply += data
    except (ConnectionResetError, TimeoutError):
        pass
    return reply


def timed_segment(url: str, image: bytes) -> tuple[int, float]:
    started = time.monotonic()
    response = httpx.post(f"{url}/v1/segment", content=image, timeout=60)
    return response.status_code, time.monotonic() - started


def test_stalled_uploads_hold_no_place_and_time_out_on_their_own(gateway_source_repository, tmp_path, scene_png):
    server = GatewayProcess(gateway_source_repository.root, tmp_path / "gateway.log", workers=2, queue_size=8,
                            max_uploads=STALLED + 1, upload_idle_timeout=3, request_timeout=60, retry_after=2)
    connections: list[socket.socket] = []
    try:
        server.wait_ready()
        for _ in range(2):  # warm-up
            assert timed_segment(server.url, scene_png)[0] == 200
        normal = statistics.median(timed_segment(server.url, scene_png)[1] for _ in range(5))

        connections = [stalled_upload(server.port) for _ in range(STALLED)]
        deadline = time.monotonic() + 10
        while metric(server.url, "sceneparse_uploads_in_progress") < STALLED:
            assert time.monotonic() < deadline, "the stalled uploads never reached the route"
            time.sleep(0.05)
        opened = time.monotonic()
        # They take no worker and no queue place, and are charged nothing.
        assert metric(server.url, "sceneparse_queue_depth") == 0
        assert metric(server.url, "sceneparse_requests_in_progress") == 0
        assert metric(server.url, "sceneparse_admitted_cost_bytes") == 0
        # An ordinary request still gets its 200 within its normal latency plus 1 s.
        status, seconds = timed_segment(server.url, scene_png)
        assert status == 200 and seconds <= normal + 1.0, (seconds, normal)
        print(f"with {STALLED} stalled uploads: {seconds * 1000:.0f} ms (normal: median {normal * 1000:.0f} ms)")

        # One more stalled upload fills the last slot: the next upload is refused at once, with Retry-After.
        connections.append(stalled_upload(server.port))
        while metric(server.url, "sceneparse_uploads_in_progress") < STALLED + 1:
            time.sleep(0.05)
        refused = httpx.post(f"{server.url}/v1/segment", content=scene_png, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"] == "uploads_full"
        assert refused.headers["retry-after"] == "2"

        # No byte for upload_idle_timeout (3 s) -> 408, long before the 60 s deadline.
        for conn in connections:
            reply = read_reply(conn)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
            assert b"request_timeout" in reply
        waited = time.monotonic() - opened
        assert 2.5 < waited < 20, waited
        assert metric(server.url, "sceneparse_uploads_in_progress") == 0
        assert timed_segment(server.url, scene_png)[0] == 200
        assert server.process.poll() is None
    finally:
        for conn in connections:
            conn.close()
        server.stop()


def test_a_trickling_upload_is_bounded_by_the_deadline(gateway_source_repository, tmp_path, scene_png):
    # A byte every half second never trips the inactivity timeout; the request's deadline ends it.
    server = GatewayProcess(gateway_source_repository.root, tmp_path / "gateway.log", upload_idle_timeout=2,
                            request_timeout=3)
    try:
        server.wait_ready()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
            conn.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\n")
            started = time.monotonic()
            conn.settimeout(0.5)
            reply = b""
            for index in range(40):
                try:
                    conn.sendall(scene_png[index:index + 1])
                    reply = conn.recv(65536)
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
                if reply:
                    break
            elapsed = time.monotonic() - started
            conn.settimeout(10)
            reply += read_reply(conn)  # the body may come in a later segment; the server then closes
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"connection: close" in reply.lower()
        assert b"did not arrive within 3 s" in reply
        assert 2.5 < elapsed < 10, elapsed
    finally:
        server.stop()
