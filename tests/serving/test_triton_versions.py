"""Versions on a real Triton (tests/serving/triton/harness.py): warm-up, a bounded queue, switching only
once Triton has a version ready, and a rollback outside version_policy.

Each test starts its own server over a copy of one tiny model (a quicker start than both).
"""

from __future__ import annotations

import re
import shutil
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from retraining.versions import roll_back
from serving.backends.base import BackendBusy
from serving.backends.triton import TritonBackend, load_model
from serving.main import create_app
from serving.repository import CONFIG_FILE, ModelRepository
from serving.settings import Settings
from tests.serving.conftest import encode, republish, scene_array
from tests.serving.test_limits import wait_until
from tests.serving.triton.harness import TritonHarnessError

pytestmark = pytest.mark.triton


def one_model(source: ModelRepository, root, name: str | None = None, **config_changes) -> ModelRepository:
    """A copy of one model of `source`; `config_changes` rewrite `key: value` lines of its config.pbtxt."""
    name = name or source.list_models()[0]
    shutil.copytree(source.model_dir(name), root / name, ignore=shutil.ignore_patterns(".tmp-*", ".publish.lock"))
    config = root / name / CONFIG_FILE
    text = config.read_text()
    for key, value in config_changes.items():
        text, count = re.subn(rf"\b{key}: [^\s}}]+", f"{key}: {value}", text)
        assert count, f"{key} not in config.pbtxt"
    config.write_text(text)
    return ModelRepository(root)


def test_triton_runs_the_exported_warmup_before_the_version_is_ready(triton_server_factory, triton_source_repository,
                                                                      tmp_path):
    """Triton executes config.pbtxt's model_warmup at load: a warm-up that cannot run fails the load."""
    repository = one_model(triton_source_repository, tmp_path / "good")
    name = repository.list_models()[0]
    meta = repository.read_metadata(name)
    assert f"batch_size: {meta.max_batch_size}" in (repository.model_dir(name) / CONFIG_FILE).read_text()
    server = triton_server_factory(repository)
    assert server.model_ready(name, meta.version)
    server.stop()
    # The same model with a warm-up sample of the wrong size never becomes ready.
    config_file = repository.model_dir(name) / CONFIG_FILE
    config = text_format.Parse(config_file.read_text(), model_config_pb2.ModelConfig())
    (sample,) = config.model_warmup[0].inputs.values()
    assert list(sample.dims) == [3, meta.crop_h, meta.crop_w]
    sample.dims[:] = [3, 7, 7]
    config_file.write_text(text_format.MessageToString(config))
    server.sync()
    # Triton ran the warm-up sample (its 7x7 shape is in the error) and refused to start serving.
    with pytest.raises(TritonHarnessError, match=r"unexpected shape for input 'input'.*got \[1,3,7,7\]"):
        server.start()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_full_triton_queue_is_backend_busy_and_503_with_retry_after(protocol, triton_server_factory,
                                                                      triton_source_repository, tmp_path):
    repository = one_model(triton_source_repository, tmp_path / "repository", max_queue_size=1)
    name = repository.list_models()[0]
    meta = repository.read_metadata(name)
    server = triton_server_factory(repository)
    backend = TritonBackend(server.url(protocol), protocol, timeout_s=30)
    runner = backend.open(repository, meta)
    batch = np.random.default_rng(0).normal(size=(meta.max_batch_size, 3, meta.crop_h, meta.crop_w))
    outcomes: list[str] = []

    def send() -> None:
        try:
            runner(batch.astype(np.float32))
            outcomes.append("ok")
        except BackendBusy as exc:
            outcomes.append("busy" if "maximum queue size" in str(exc) else f"busy? {exc}")
        except Exception as exc:  # any other failure is a bug in the mapping
            outcomes.append(f"{type(exc).__name__}: {exc}")

    try:
        threads = [threading.Thread(target=send) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        # One batch runs, one waits, the rest are refused at once; nothing else happens.
        assert set(outcomes) == {"ok", "busy"}, outcomes
        # The same through the gateway: 503 backend_busy with Retry-After, no 5xx of another kind.
        settings = Settings(repository=repository.root, poll_interval=0, backend="triton", triton_protocol=protocol,
                            triton_url=server.url(protocol), workers=12, queue_size=0, retry_after=3)
        image = encode(scene_array(meta.crop_h, meta.crop_w))  # one window + its flip: one batch
        answers: list = []
        with TestClient(create_app(settings)) as client:
            def segment() -> None:
                answers.append(client.post("/v1/segment", content=image))

            threads = [threading.Thread(target=segment) for _ in range(12)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            metrics = client.get("/metrics").text
        statuses = sorted(answer.status_code for answer in answers)
        assert set(statuses) == {200, 503}, statuses
        for answer in answers:
            if answer.status_code == 503:
                assert answer.json()["error"] == "backend_busy" and answer.headers["retry-after"] == "3"
                assert server.url(protocol).split(":")[-1] not in answer.text
        assert 'sceneparse_rejected_requests_total{reason="backend_busy"}' in metrics
    finally:
        backend.close()
        server.stop()


def test_the_gateway_switches_only_once_triton_has_the_version_ready_and_rollback_widens_the_policy(
        triton_server_factory, triton_source_repository, tmp_path):
    repository = one_model(triton_source_repository, tmp_path / "repository", num_versions=2)
    name = repository.list_models()[0]
    republish(repository, name)  # versions 1 and 2, both loaded by Triton (latest 2)
    server = triton_server_factory(repository)
    settings = Settings(repository=repository.root, poll_interval=0, backend="triton", triton_url=server.http_url,
                        triton_timeout=10)
    image = encode(scene_array())

    def served_version(client) -> int:
        answer = client.post("/v1/segment", content=image)
        assert answer.status_code == 200, answer.text
        return int(answer.headers["x-model-version"])

    try:
        with TestClient(create_app(settings)) as client:
            assert served_version(client) == 2
            # Published and seen by Triton's repository, but not loaded yet (explicit mode, no load request).
            third = republish(repository, name)
            server.sync()
            report = client.post("/v1/admin/reload").json()
            assert report["pending"] == {name: third} and report["served"][name] == 2, report
            assert served_version(client) == 2  # not a 503: the old version keeps serving
            status = client.get("/v1/admin/status").json()
            assert status["pending_versions"] == {name: third}
            load_model(server.http_url, name, "http")
            # No reload or poll needed: the gateway looks again by itself and switches once it is ready.
            wait_until(lambda: served_version(client) == third, timeout=20)
            assert client.get("/v1/admin/status").json()["pending_versions"] == {}

            # Roll back to version 1: Triton's latest-2 policy loads 2 and 3 only, so it is widened.
            done = roll_back(repository, name, to=1)
            assert done.widened_policy == [1, 2, third]
            server.sync()
            assert client.post("/v1/admin/reload").json()["pending"] == {name: 1}
            assert served_version(client) == third
            load_model(server.http_url, name, "http")  # what `sceneparse rollback --triton-url` sends
            wait_until(lambda: served_version(client) == 1, timeout=20)
            assert server.model_ready(name, 2) and server.model_ready(name, third)  # nothing serving was unloaded
            started = time.monotonic()
            assert all(served_version(client) == 1 for _ in range(3))
            assert time.monotonic() - started < 30
    finally:
        server.stop()
