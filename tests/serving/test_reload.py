"""Hot reload: new, pinned, broken and removed versions; in-flight requests keep their version; nothing fails."""

from __future__ import annotations

import shutil
import threading

import pytest
from fastapi.testclient import TestClient

from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.main import create_app
from serving.models import ModelManager
from serving.repository import ModelNotFoundError
from serving.settings import Settings
from tests.serving.conftest import republish
from tests.serving.test_limits import GatedBackend, wait_until


@pytest.fixture
def manager(writable_repository):
    manager = ModelManager(writable_repository, OnnxRuntimeBackend(device="cpu", threads=1))
    manager.refresh()
    yield manager
    manager.close()


def test_refresh_swaps_versions_and_closes_the_old_one_after_its_last_lease(manager, model_name):
    repository = manager.repository
    first = manager.get(model_name)
    assert first.version == repository.served_version(model_name)
    with manager.lease(model_name) as held:
        new_version = republish(repository, model_name)
        report = manager.refresh()
        assert report.changed == {model_name: [first.version, new_version]} and report.errors == {}
        assert manager.get(model_name).version == new_version
        assert held is first and held.retired and not held.closed
        assert held.runner.session is not None  # still usable by the request holding it
    assert first.closed and first.runner.session is None
    assert manager.refresh().changed == {}  # nothing new: nothing reloaded


def test_pinned_version_is_served_and_unpinning_returns_to_the_newest(manager, model_name):
    repository = manager.repository
    old = manager.get(model_name).version
    newest = republish(repository, model_name)
    manager.refresh()
    repository.set_pinned_version(model_name, old)
    assert manager.refresh().changed == {model_name: [newest, old]}
    assert manager.get(model_name).version == old
    repository.set_pinned_version(model_name, None)
    manager.refresh()
    assert manager.get(model_name).version == newest


def test_a_broken_new_version_is_reported_and_the_old_one_keeps_serving(manager, model_name):
    repository = manager.repository
    old = manager.get(model_name).version
    meta = repository.read_metadata(model_name)
    broken = republish(repository, model_name)
    (repository.version_dir(model_name, broken) / meta.files["onnx"]).write_bytes(b"garbage")
    report = manager.refresh()
    assert model_name in report.errors and "onnxruntime cannot load it" in report.errors[model_name]
    assert manager.get(model_name).version == old


def test_removed_models_are_unloaded_and_a_missing_root_keeps_them(manager, model_name):
    repository = manager.repository
    hidden = repository.root.parent / "hidden"
    shutil.move(repository.root, hidden)
    assert "*" in manager.refresh().errors
    assert manager.get(model_name)  # kept: a vanished mount is not a purge
    repository.root.mkdir()
    assert manager.refresh().changed[model_name][1] is None
    with pytest.raises(ModelNotFoundError):
        manager.acquire(model_name)


def test_requests_never_fail_while_versions_are_published(writable_repository, model_name, scene_png):
    """A thread keeps segmenting while new versions land via /v1/admin/reload and via polling."""
    settings = Settings(repository=writable_repository.root, poll_interval=0.2, ort_threads=1, workers=2)
    with TestClient(create_app(settings)) as client:
        statuses: list[int] = []
        seen: list[list[int]] = [[], []]  # versions answered, per sender
        versions: list[int] = []  # all senders, in completion order
        stop = threading.Event()

        def keep_segmenting(mine: list[int]) -> None:
            while not stop.is_set():
                response = client.post("/v1/segment", params={"model": model_name}, content=scene_png)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    mine.append(int(response.headers["x-model-version"]))
                    versions.append(mine[-1])

        senders = [threading.Thread(target=keep_segmenting, args=(mine,)) for mine in seen]
        for sender in senders:
            sender.start()
        try:
            start = writable_repository.served_version(model_name)
            wait_until(lambda: len(versions) >= 3)
            second = republish(writable_repository, model_name)
            reload = client.post("/v1/admin/reload").json()
            assert reload["served"][model_name] == second and reload["errors"] == {}
            assert reload["changed"] in ({model_name: [start, second]}, {})  # {}: the poller was first
            wait_until(lambda: versions[-1] == second)
            third = republish(writable_repository, model_name)  # picked up by the poller alone
            wait_until(lambda: versions[-1] == third, timeout=20)
            count = len(versions)
            wait_until(lambda: len(versions) >= count + 3)
        finally:
            stop.set()
            for sender in senders:
                sender.join(30)
        assert statuses and set(statuses) == {200}, statuses
        assert {start, second, third} <= set(versions)
        # One sender's requests are sequential: once it got a newer version it never gets an older one.
        for mine in seen:
            assert mine == sorted(mine)
        models = client.get("/v1/models").json()["models"]
        assert next(m for m in models if m["name"] == model_name)["versions"][-2:] == [second, third]
        assert f'sceneparse_model_version{{model="{model_name}"}} {third}.0' in client.get("/metrics").text


def test_in_flight_request_finishes_on_the_version_it_started_on(writable_repository, model_name, scene_png):
    backend = GatedBackend()
    settings = Settings(repository=writable_repository.root, poll_interval=0, workers=2)
    with TestClient(create_app(settings, backend)) as client:
        gateway = client.app.state.gateway
        old = gateway.manager.get(model_name)
        answers: list = []
        slow = threading.Thread(target=lambda: answers.append(
            client.post("/v1/segment", params={"model": model_name}, content=scene_png)))
        slow.start()
        backend.entered.wait(10)  # the request is inside the old version's runner
        new_version = republish(writable_repository, model_name)
        assert client.post("/v1/admin/reload").json()["served"][model_name] == new_version
        assert old.retired and not old.closed and old.leases == 1
        backend.gate.set()
        slow.join(30)
        assert answers[0].status_code == 200
        assert int(answers[0].headers["x-model-version"]) == old.version
        wait_until(lambda: old.closed)
        fresh = client.post("/v1/segment", params={"model": model_name}, content=scene_png)
        assert int(fresh.headers["x-model-version"]) == new_version


def test_a_gateway_started_on_an_empty_repository_becomes_ready_when_a_model_appears(
        gateway_source_repository, model_name, scene_png, tmp_path):
    root = tmp_path / "repository"
    root.mkdir()
    settings = Settings(repository=root, poll_interval=0, ort_threads=1)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "no model is loaded" in ready.json()["reason"]
        assert client.get("/v1/models").json() == {"models": []}
        refused = client.post("/v1/segment", content=scene_png)
        assert refused.status_code == 503 and refused.json()["error"] == "not_ready"
        shutil.copytree(gateway_source_repository.model_dir(model_name), root / model_name)
        assert client.post("/v1/admin/reload").json()["served"] == {
            model_name: gateway_source_repository.served_version(model_name)}
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/segment", content=scene_png).status_code == 200
