"""`sceneparse serve` as a real uvicorn process: SIGTERM drain, chunked uploads over the limit, CLI errors."""

from __future__ import annotations

import re
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from serving import cli
from tests.serving.conftest import encode, scene_array
from tests.serving.gateway_process import GatewayProcess


def in_progress(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return float(re.search(r"^sceneparse_requests_in_progress (\S+)$", text, re.M).group(1))


def test_sigterm_turns_readiness_off_lets_in_flight_requests_finish_then_exits(
        gateway_source_repository, tmp_path, model_name):
    server = GatewayProcess(gateway_source_repository.root, tmp_path / "gateway.log",
                            shutdown_drain_seconds=1.5, workers=1, max_side_limit=4096)
    try:
        server.wait_ready()
        # A deliberately heavy request (a few seconds): 3 scales with flip, stitched at 1600x1600.
        big = encode(np.kron(scene_array(40, 40), np.ones((40, 40, 1), dtype=np.uint8)))
        params = {"model": model_name, "scales": "0.5,1.0,1.5", "flip": "true", "max_side": 1600, "output": "label"}
        answers: list[httpx.Response] = []
        slow = threading.Thread(target=lambda: answers.append(
            httpx.post(f"{server.url}/v1/segment", params=params, content=big, timeout=120)))
        slow.start()
        deadline = time.monotonic() + 60
        while in_progress(server.url) < 1:
            assert time.monotonic() < deadline and slow.is_alive(), "the slow request never started"
            time.sleep(0.02)
        server.terminate()
        time.sleep(0.3)
        ready = httpx.get(f"{server.url}/readyz", timeout=5)  # still accepting during the drain
        assert ready.status_code == 503 and ready.json()["reason"] == "shutting down"
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        slow.join(120)
        assert answers and answers[0].status_code == 200, answers
        assert answers[0].headers["content-type"] == "image/png"
        assert server.process.wait(60) == 0
        assert "Shutting down" in server.log() and "Traceback" not in server.log()
    finally:
        server.stop()


def read_status_line(conn: socket.socket) -> bytes:
    reply = b""
    try:
        while b"\r\n\r\n" not in reply:
            data = conn.recv(65536)
            if not data:
                break
            reply += data
    except ConnectionResetError:
        pass
    return reply


def test_chunked_upload_over_the_limit_is_413_and_a_stalled_upload_408(gateway_source_repository, tmp_path,
                                                                      scene_png):
    server = GatewayProcess(gateway_source_repository.root, tmp_path / "gateway.log", max_body_bytes=100_000,
                            request_timeout=2)
    try:
        server.wait_ready()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
            conn.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: image/png\r\n\r\n")
            chunk = bytes(16_384)
            try:
                for _ in range(40):  # 640 kB, far past the limit; the server may hang up midway
                    conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                conn.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            reply = read_status_line(conn)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"body_too_large" in reply or b"content-length" in reply.lower()
        # A client that stops sending halfway: the request times out, its place is freed.
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
            conn.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\n"
                         + scene_png[:100])
            started = time.monotonic()
            reply = read_status_line(conn)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert 1.5 < time.monotonic() - started < 20
        # The server is unharmed.
        assert httpx.post(f"{server.url}/v1/segment", content=scene_png, timeout=60).status_code == 200
        assert server.process.poll() is None
    finally:
        server.stop()


def test_cli_refuses_bad_settings_with_one_line(capsys, monkeypatch, tmp_path):
    assert cli.main(["--repository", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a directory" in err
    monkeypatch.setenv("SCENEPARSE_PORT", "eighty")
    assert cli.main(["--repository", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "SCENEPARSE_PORT" in err
    monkeypatch.delenv("SCENEPARSE_PORT")
    assert cli.main(["--repository", str(tmp_path), "--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--backend", "tensorflow"])


def test_flags_override_the_environment(monkeypatch, tmp_path):
    captured = {}
    monkeypatch.setenv("SCENEPARSE_PORT", "9999")
    monkeypatch.setenv("SCENEPARSE_BACKEND", "triton")
    monkeypatch.setenv("SCENEPARSE_TRITON_URL", "triton.internal:8001")
    monkeypatch.setattr(cli.GatewayServer, "run", lambda self: captured.update(
        host=self.config.host, port=self.config.port, settings=self.config.app.state.settings))
    assert cli.main(["--repository", str(tmp_path), "--port", "8123", "--triton-protocol", "grpc"]) == 1
    settings = captured["settings"]
    assert captured["port"] == 8123 and settings.backend == "triton" and settings.triton_protocol == "grpc"
    assert settings.resolved_triton_url == "triton.internal:8001"
