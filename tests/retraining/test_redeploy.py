"""`sceneparse pipeline` against live serving: a real gateway process and a real tritonserver.

- The gateway (uvicorn, ONNX Runtime, repository polling off) is told by the pipeline's notify
  step (POST /v1/admin/reload with the admin key) while clients keep segmenting: no request
  fails and the responses' X-Model-Version switches from 1 to 2.
- Triton in explicit model-control mode gets the pipeline's load request and then serves the new
  version. The harness's Triton has only the python backend, so it serves a mirror of the
  repository (tests/serving/triton/harness.py); the mirror is brought up to date right before the
  pipeline's notify step, as a real Triton would see the repository itself.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import retraining.pipeline
from retraining.cli import pipeline_main
from serving.backends.triton import TritonBackend
from serving.repository import ModelRepository
from tests.retraining.conftest import MODEL, pipeline_args
from tests.serving.gateway_process import GatewayProcess


def _scene_png(synthetic_dataset) -> bytes:
    first_image = synthetic_dataset.val_list.read_text().split()[0]
    return (Path(synthetic_dataset.root) / first_image).read_bytes()


def _copy(repository: Path, target: Path) -> Path:
    return shutil.copytree(repository, target, ignore=shutil.ignore_patterns(".tmp-*", ".publish.lock"))


def test_pipeline_switches_a_live_gateway_without_a_failed_request(
        deployed, tmp_path, tiny_training_overrides, synthetic_dataset):
    repo_dir = _copy(deployed[0], tmp_path / "repo")
    image = _scene_png(synthetic_dataset)
    gateway = GatewayProcess(repo_dir, tmp_path / "gateway.log", api_keys="client-key", admin_keys="admin-key",
                             workers=2)
    outcomes: list[tuple[int, str | None]] = []  # (status, X-Model-Version) in completion order
    stop = threading.Event()

    def keep_segmenting() -> None:
        with httpx.Client(base_url=gateway.url, headers={"X-API-Key": "client-key"}, timeout=60) as client:
            while not stop.is_set():
                response = client.post("/v1/segment", params={"model": MODEL, "output": "label"}, content=image)
                outcomes.append((response.status_code, response.headers.get("x-model-version")))

    try:
        gateway.wait_ready()
        sender = threading.Thread(target=keep_segmenting)
        sender.start()
        try:
            while len(outcomes) < 3 and sender.is_alive():
                time.sleep(0.05)
            code = pipeline_main(pipeline_args(repo_dir, tmp_path / "runs", tiny_training_overrides,
                                               "--max-regression", "1", "--class-tolerance", "1",
                                               "--gateway-url", gateway.url, "--admin-key", "admin-key"))
            assert code == 0
            # The reload is answered after the swap, so the next requests are on version 2.
            count = len(outcomes)
            deadline = time.monotonic() + 30
            while len(outcomes) < count + 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            sender.join(60)
    finally:
        gateway.stop()
    statuses = {status for status, _ in outcomes}
    assert statuses == {200}, (outcomes, gateway.log()[-3000:])
    versions = [int(version) for _, version in outcomes]
    assert versions[0] == 1 and versions[-1] == 2
    assert versions == sorted(versions), "one client's sequential requests never go back to the old version"
    assert ModelRepository(repo_dir).served_version(MODEL) == 2


def test_pipeline_load_request_makes_triton_serve_the_new_version(
        deployed, tmp_path, tiny_training_overrides, triton_server_factory, monkeypatch):
    repo = ModelRepository(_copy(deployed[0], tmp_path / "repo"))
    server = triton_server_factory(repo)  # explicit model control: loads what is there at start
    assert server.model_ready(MODEL, 1)
    notify = retraining.pipeline.notify_serving

    def sync_mirror_then_notify(request):
        server.sync()  # stands in for Triton reading the production repository itself
        # Explicit mode: the new version is on disk but not served before the load request.
        assert not server.model_ready(MODEL, 2)
        return notify(request)

    monkeypatch.setattr(retraining.pipeline, "notify_serving", sync_mirror_then_notify)
    code = pipeline_main(pipeline_args(repo.root, tmp_path / "runs", tiny_training_overrides,
                                       "--max-regression", "1", "--class-tolerance", "1",
                                       "--triton-url", server.http_url, "--triton-protocol", "http"))
    assert code == 0
    assert server.model_ready(MODEL, 2), server.log_tail()
    meta = repo.read_metadata(MODEL, 2)
    backend = TritonBackend(server.http_url, "http", timeout_s=10.0)
    try:
        runner = backend.open(repo, meta)
        batch = np.random.default_rng(0).normal(size=(2, 3, meta.crop_h, meta.crop_w)).astype(np.float32)
        logits = runner(batch)
        assert logits.shape == (2, meta.num_classes, meta.crop_h, meta.crop_w) and np.isfinite(logits).all()
    finally:
        backend.close()
    # Triton's version_policy keeps both retained versions loaded, so a rollback needs no reload.
    assert server.model_ready(MODEL, 1)


@pytest.mark.parametrize("bad_url", ["http://127.0.0.1:9"])
def test_an_unreachable_gateway_is_a_warning_after_the_publish(deployed, tmp_path, tiny_training_overrides,
                                                               bad_url, capsys):
    repo_dir = _copy(deployed[0], tmp_path / "repo")
    code = pipeline_main(pipeline_args(repo_dir, tmp_path / "runs", tiny_training_overrides,
                                       "--max-regression", "1", "--class-tolerance", "1", "--gateway-url", bad_url))
    assert code == 0  # published: the gateway's own polling (or the next reload) still finds it
    assert ModelRepository(repo_dir).list_versions(MODEL) == [1, 2]
    assert f"gateway {bad_url} unreachable for reload" in capsys.readouterr().out
