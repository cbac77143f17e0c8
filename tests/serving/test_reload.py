"""Hot reload: new, pinned, broken and removed versions; in-flight requests keep their version; nothing fails.

Also: bad repository entries never stop the gateway, and a version is warmed up before it serves.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from serving.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeRunner
from serving.main import create_app
from serving.models import ModelManager
from serving.repository import DEPLOYMENT_FILE, METADATA_FILE, ModelMetadata, ModelNotFoundError
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


# --- bad repository entries ---------------------------------------------------------------------
def test_bad_entries_never_stop_the_gateway(writable_repository, model_name, scene_png, tmp_path):
    """Each kind of bad entry is skipped and reported alone; every other model loads and the poller goes on."""
    repository = writable_repository
    root = repository.root
    other = next(name for name in repository.list_models() if name != model_name)
    shutil.copytree(root / model_name, root / "bad name")  # a name no URL or Triton can carry
    shutil.copytree(root / model_name, tmp_path / "elsewhere" / "escaped")
    (root / "escaped").symlink_to(tmp_path / "elsewhere" / "escaped")  # a symlink leaving the repository
    half = root / other / "2"
    half.mkdir()  # half-written: copied by hand, the metadata not there yet
    shutil.copy(repository.model_file(other, 1), half / "model.onnx")
    shutil.copytree(repository.version_dir(other, 1), root / other / "3")
    (root / other / "3" / METADATA_FILE).write_text(f'{{"name": "{other}", "vers')  # unreadable metadata

    settings = Settings(repository=root, poll_interval=0.2, ort_threads=1, admin_keys=["admin-key"])
    with TestClient(create_app(settings)) as client:
        admin = {"X-API-Key": "admin-key"}
        served = {m["name"]: m["version"] for m in client.get("/v1/models", headers=admin).json()["models"]}
        assert served == {model_name: 1, other: 1}
        for name in (model_name, other):
            response = client.post("/v1/segment", params={"model": name}, content=scene_png, headers=admin)
            assert response.status_code == 200 and response.headers["x-model-version"] == "1"
        status = client.get("/v1/admin/status", headers=admin).json()
        skipped = status["skipped_entries"]
        assert set(skipped) == {"bad name", "escaped", other}, skipped
        assert "not a valid model name" in skipped["bad name"][0]
        assert "leads outside the repository" in skipped["escaped"][0]
        assert any(f"{other}/2: incomplete" in p for p in skipped[other])
        assert any(f"{other}/3: its sceneparse.json is not valid JSON" in p for p in skipped[other])
        assert status["load_errors"] == {}
        assert "sceneparse_repository_skipped_entries 4.0" in client.get("/metrics", headers=admin).text
        # Public answers say nothing of them; no path of this machine anywhere.
        ready = client.get("/readyz")
        assert ready.status_code == 200 and "bad name" not in ready.text and str(tmp_path) not in ready.text
        for problems in skipped.values():
            assert not any(str(tmp_path) in problem for problem in problems)

        # The poller keeps running: a new version beside the bad entries is picked up.
        new_version = republish(repository, model_name)
        wait_until(lambda: client.post("/v1/segment", params={"model": model_name}, content=scene_png,
                                       headers=admin).headers["x-model-version"] == str(new_version), timeout=20)
        # An entry that turns bad keeps its loaded version serving, and says why.
        (root / model_name / DEPLOYMENT_FILE).write_text("{garbage")
        wait_until(lambda: model_name in client.get("/v1/admin/status", headers=admin).json()["skipped_entries"])
        response = client.post("/v1/segment", params={"model": model_name}, content=scene_png, headers=admin)
        assert response.status_code == 200 and response.headers["x-model-version"] == str(new_version)
        # Mended, it is no longer reported.
        (root / model_name / DEPLOYMENT_FILE).unlink()
        wait_until(lambda: model_name not in client.get("/v1/admin/status", headers=admin).json()["skipped_entries"])


# --- warm-up ------------------------------------------------------------------------------------
class RecordingBackend(OnnxRuntimeBackend):
    """The real ONNX Runtime backend; each runner records every batch it runs and which version served
    its model at that moment (`manager` is set by the test)."""

    def __init__(self):
        super().__init__(device="cpu", threads=1)
        self.calls: list[tuple[int, tuple[int, ...], int | None]] = []  # (version, batch shape, serving version)
        self.manager: ModelManager | None = None

    def open(self, repository, meta):
        runner = super().open(repository, meta)
        backend = self

        class Recording(OnnxRuntimeRunner):
            def __call__(self, batch):
                serving = None
                if backend.manager is not None:
                    with contextlib.suppress(ModelNotFoundError):
                        serving = backend.manager.get(meta.name).version
                backend.calls.append((meta.version, tuple(batch.shape), serving))
                return super().__call__(batch)

        return Recording(meta, runner.session)


@pytest.mark.parametrize("warmup", [True, False])
def test_a_version_is_warmed_up_at_its_crop_and_max_batch_before_it_serves(writable_repository, model_name, warmup):
    backend = RecordingBackend()
    manager = ModelManager(writable_repository, backend, warmup=warmup)
    backend.manager = manager
    try:
        manager.refresh()
        meta = manager.get(model_name).meta
        expected = (meta.max_batch_size, 3, meta.crop_h, meta.crop_w)
        new_version = republish(writable_repository, model_name)
        backend.calls.clear()
        assert manager.refresh().changed[model_name] == [1, new_version]
        if warmup:
            # One max-batch run of the new version, while the old one still served.
            assert backend.calls == [(new_version, expected, 1)]
        else:
            assert backend.calls == []
    finally:
        manager.close()


def fixed_shape_onnx(path: Path, classes: int, side: int) -> None:
    """A model that loads but takes only one (1, 3, side, side) batch: every other shape fails at run time."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [classes, 3, 1, 1], np.ones(classes * 3, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"])], "fixed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes, side, side])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("warmup", [True, False])
def test_a_version_that_fails_its_warm_up_never_serves(writable_repository, model_name, scene_png, warmup):
    """A graph that opens but cannot run the model's batches: warm-up keeps it out; without it, it would serve."""
    repository = writable_repository
    meta = repository.read_metadata(model_name)
    settings = Settings(repository=repository.root, poll_interval=0, ort_threads=1, warmup=warmup)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        def populate(staging: Path) -> ModelMetadata:
            fixed_shape_onnx(staging / meta.files["onnx"], meta.num_classes, 33)
            return ModelMetadata.from_dict(meta.to_dict())

        broken, _ = repository.publish_version(model_name, populate)
        report = client.post("/v1/admin/reload").json()
        answer = client.post("/v1/segment", params={"model": model_name}, content=scene_png)
        if warmup:
            assert "Got invalid dimensions" in report["errors"][model_name]
            assert report["served"][model_name] == 1
            assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
        else:
            assert report["served"][model_name] == broken and report["errors"] == {}
            assert answer.status_code == 500
        json.dumps(report)
