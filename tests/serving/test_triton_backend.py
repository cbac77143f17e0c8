"""The Triton backend against a real tritonserver (tests/serving/triton/harness.py).

One server per module serves a python-backend mirror of the exported tiny models (the same
model.onnx files); tests run in file order: plain inference first, then outages (kill, pause)
and explicit model control, each leaving the server up and every model loaded again.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from serving.backends.base import BackendUnavailable
from serving.backends.triton import TritonBackend, TritonError, load_model, split_url, unload_model
from serving.pipeline import InferenceOptions, PipelineSpec, PipelineStats, predict_label
from serving.repository import CONFIG_FILE, ModelMetadata, ModelRepository
from tests.serving.triton.harness import parse_model_config

pytestmark = pytest.mark.triton
PROTOCOLS = ["http", "grpc"]


class LocalOnnxRuntime:
    """The reference: the same model.onnx in an in-process ONNX Runtime session (1 thread, CPU)."""

    def __init__(self, path: Path, meta: ModelMetadata):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.meta = meta
        self.max_batch_size = meta.max_batch_size

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        dtype = np.float16 if self.meta.precision == "fp16" else np.float32
        feed = {self.meta.input_name: np.ascontiguousarray(batch, dtype=dtype)}
        return self.session.run([self.meta.output_name], feed)[0].astype(np.float32)


@pytest.fixture(scope="module")
def repository(triton_source_repository) -> ModelRepository:
    return triton_source_repository


@pytest.fixture(scope="module")
def meta(repository) -> ModelMetadata:
    return repository.read_metadata(repository.list_models()[0])


@pytest.fixture(scope="module")
def reference(repository, meta) -> LocalOnnxRuntime:
    return LocalOnnxRuntime(repository.model_file(meta.name, meta.version), meta)


@pytest.fixture(params=PROTOCOLS)
def backend(request, triton_server):
    backend = TritonBackend(triton_server.url(request.param), request.param, timeout_s=10.0)
    yield backend
    backend.close()


def random_batch(meta: ModelMetadata, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, (n, 3, meta.crop_h, meta.crop_w)).astype(np.float32)


def test_split_url_accepts_schemes_and_rejects_nonsense():
    assert split_url("grpc://triton:8001") == ("triton:8001", "grpc")
    assert split_url("http://127.0.0.1:8000/", None) == ("127.0.0.1:8000", "http")
    assert split_url("grpc://triton:8001", "http") == ("triton:8001", "grpc")  # the URL says it
    assert split_url("localhost:8001", "grpc") == ("localhost:8001", "grpc")
    with pytest.raises(ValueError, match="protocol"):
        split_url("localhost:8000", "websocket")
    with pytest.raises(ValueError, match="host:port"):
        split_url("localhost")
    with pytest.raises(ValueError, match="TLS"):
        split_url("https://triton:8000")


def test_production_config_is_untouched_and_mirrored_for_the_python_backend(repository, triton_server):
    for name in repository.list_models():
        meta = repository.read_metadata(name)
        production = parse_model_config(repository.model_dir(name) / CONFIG_FILE)
        assert production.platform == "onnxruntime_onnx" or production.backend == "onnxruntime"
        assert [t.name for t in production.input] == [meta.input_name]
        assert [t.name for t in production.output] == [meta.output_name]
        assert production.max_batch_size == meta.max_batch_size
        harness = parse_model_config(triton_server.repository / name / CONFIG_FILE)
        assert harness.backend == "python" and not harness.platform
        assert harness.input == production.input and harness.output == production.output
        assert harness.max_batch_size == production.max_batch_size
        assert harness.dynamic_batching == production.dynamic_batching
        assert harness.version_policy == production.version_policy
        # The mirror serves the very same file export wrote.
        served = triton_server.repository / name / str(meta.version) / meta.files["onnx"]
        assert served.resolve() == repository.model_file(name, meta.version).resolve()


def test_runner_returns_the_logits_of_onnxruntime(backend, repository):
    for name in repository.list_models():  # every exported architecture
        meta = repository.read_metadata(name)
        reference = LocalOnnxRuntime(repository.model_file(name, meta.version), meta)
        runner = backend.open(repository, meta)
        for n in sorted({1, meta.max_batch_size}):
            batch = random_batch(meta, n, seed=n)
            got = runner(batch)
            want = reference(batch)
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_pipeline_masks_are_identical_through_triton_and_onnxruntime(backend, meta, reference):
    rng = np.random.default_rng(7)
    # Blocks of colour with noise, larger than one crop so that windows overlap.
    image = np.kron(rng.integers(0, 256, (4, 5, 3)), np.ones((meta.crop_h // 2 + 3, meta.crop_w // 2 + 5, 1)))
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    spec = PipelineSpec.from_metadata(meta)
    options = InferenceOptions(scales=(0.75, 1.0), flip=True)
    via_triton, via_local = PipelineStats(), PipelineStats()
    runner = backend.open(None, meta)
    mask_triton = predict_label(image, runner, spec, options, via_triton)
    mask_local = predict_label(image, reference, spec, options, via_local)
    assert mask_triton.shape == image.shape[:2]
    np.testing.assert_array_equal(mask_triton, mask_local)
    assert via_triton.tiles == via_local.tiles > 2
    assert via_triton.batches == -(-via_triton.tiles // meta.max_batch_size)


def test_liveness_and_model_readiness(backend, meta):
    assert backend.live()
    assert backend.model_ready(meta)
    assert not backend.model_ready(dataclasses.replace(meta, version=meta.version + 40))
    assert not backend.model_ready(dataclasses.replace(meta, name="no_such_model"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nothing_listening_is_unavailable_fast(protocol, meta):
    from tests.serving.triton.harness import free_port

    backend = TritonBackend(f"127.0.0.1:{free_port()}", protocol, timeout_s=10.0)
    try:
        start = time.monotonic()
        assert not backend.live()
        assert not backend.model_ready(meta)
        with pytest.raises(BackendUnavailable, match="unreachable"):
            backend.open(None, meta)(random_batch(meta, 1))
        assert time.monotonic() - start < 3.0
    finally:
        backend.close()


def test_bad_request_is_an_error_not_an_outage(backend, meta):
    # Wrong tensor name: Triton answers and refuses; the model is ready, so this is no 503.
    runner = backend.open(None, dataclasses.replace(meta, input_name="not_the_input"))
    with pytest.raises(TritonError, match="refused"):
        runner(random_batch(meta, 1))


def test_killed_server_makes_runner_unavailable_and_the_same_backend_recovers(triton_server, meta, reference):
    backends = {p: TritonBackend(triton_server.url(p), p, timeout_s=10.0) for p in PROTOCOLS}
    runners = {p: b.open(None, meta) for p, b in backends.items()}
    batch = random_batch(meta, 2, seed=3)
    try:
        for runner in runners.values():
            runner(batch)  # connections are open and warm
        triton_server.kill()
        for protocol, backend in backends.items():
            start = time.monotonic()
            with pytest.raises(BackendUnavailable, match="Triton at .* unreachable"):
                runners[protocol](batch)
            assert not backend.live()
            assert not backend.model_ready(meta)
            assert time.monotonic() - start < 3.0, f"{protocol}: outage noticed too slowly"
        triton_server.start()  # same ports
        for protocol, backend in backends.items():
            assert backend.live(), protocol
            assert backend.model_ready(meta), protocol
            np.testing.assert_allclose(runners[protocol](batch), reference(batch), rtol=1e-5, atol=1e-5)
    finally:
        if not triton_server.running:
            triton_server.start()
        for backend in backends.values():
            backend.close()


def test_requests_in_flight_during_a_crash_fail_only_as_unavailable(triton_server, meta, reference):
    """Four threads share one backend per protocol while Triton is killed and restarted."""
    backends = {p: TritonBackend(triton_server.url(p), p, timeout_s=5.0) for p in PROTOCOLS}
    batch = random_batch(meta, 2, seed=5)
    want = reference(batch)
    outcomes: dict[str, list[str]] = {p: [] for p in PROTOCOLS}
    phase = {"stop": False}

    def hammer(protocol: str) -> None:
        runner = backends[protocol].open(None, meta)
        while not phase["stop"]:
            try:
                got = runner(batch)
                outcomes[protocol].append("ok" if np.allclose(got, want, rtol=1e-5, atol=1e-5) else "wrong")
            except BackendUnavailable:
                outcomes[protocol].append("unavailable")
            except Exception as exc:  # anything else is what this test looks for
                outcomes[protocol].append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=hammer, args=(p,)) for p in PROTOCOLS for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        triton_server.kill()
        time.sleep(0.5)
        triton_server.start()
        time.sleep(0.5)
    finally:
        phase["stop"] = True
        for thread in threads:
            thread.join(30)
        if not triton_server.running:
            triton_server.start()
    for protocol, seen in outcomes.items():
        assert set(seen) <= {"ok", "unavailable"}, f"{protocol}: {sorted(set(seen) - {'ok', 'unavailable'})}"
        assert "unavailable" in seen, f"{protocol}: the outage went unnoticed"
        assert seen[-1] == "ok", f"{protocol}: did not recover"
        assert np.allclose(backends[protocol].open(None, meta)(batch), want, rtol=1e-5, atol=1e-5)
        backends[protocol].close()


def test_hung_server_times_out_into_unavailable(triton_server, meta):
    backends = {p: TritonBackend(triton_server.url(p), p, timeout_s=1.0, health_timeout_s=0.5) for p in PROTOCOLS}
    batch = random_batch(meta, 1)
    try:
        for backend in backends.values():
            backend.open(None, meta)(batch)
        triton_server.pause()
        for protocol, backend in backends.items():
            start = time.monotonic()
            with pytest.raises(BackendUnavailable, match=r"did not answer within 1s"):
                backend.open(None, meta)(batch)
            took = time.monotonic() - start
            assert 0.9 < took < 2.5, f"{protocol}: timed out after {took:.2f}s"
            assert not backend.live()
        triton_server.resume()
        for backend in backends.values():
            backend.open(None, meta)(batch)
    finally:
        triton_server.resume()
        for backend in backends.values():
            backend.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unloaded_model_is_unavailable_until_loaded_again(protocol, triton_server, meta):
    url = triton_server.url(protocol)
    backend = TritonBackend(url, protocol, timeout_s=10.0)
    runner = backend.open(None, meta)
    try:
        unload_model(url, meta.name, protocol)
        deadline = time.monotonic() + 10
        while backend.model_ready(meta) and time.monotonic() < deadline:
            time.sleep(0.1)  # unloading finishes in the background
        assert backend.live() and not backend.model_ready(meta)
        with pytest.raises(BackendUnavailable, match="not ready"):
            runner(random_batch(meta, 1))
    finally:
        load_model(url, meta.name, protocol)
    assert backend.model_ready(meta)
    assert runner(random_batch(meta, 1)).shape[0] == 1
    backend.close()


def test_load_request_on_unknown_model_is_a_clear_error(triton_server):
    with pytest.raises(TritonError, match="no_such_model"):
        load_model(triton_server.http_url, "no_such_model", "http")


# --- through the gateway ------------------------------------------------------------------------
def gateway_client(repository: ModelRepository, **settings):
    from fastapi.testclient import TestClient

    from serving.main import create_app
    from serving.settings import Settings

    return TestClient(create_app(Settings(repository=repository.root, poll_interval=0, ort_threads=1, **settings)))


def scene_png(meta: ModelMetadata) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(5)
    image = np.kron(rng.integers(0, 256, (3, 4, 3)), np.ones((20, 20, 1))) + rng.normal(0, 10, (60, 80, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def label_of(response) -> np.ndarray:
    from PIL import Image

    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_gateway_masks_via_triton_equal_masks_via_onnxruntime(protocol, triton_server, repository, meta):
    image = scene_png(meta)
    params = {"model": meta.name, "output": "label"}
    with gateway_client(repository, backend="onnxruntime") as local:
        want = label_of(local.post("/v1/segment", params=params, content=image))
    with gateway_client(repository, backend="triton", triton_url=triton_server.url(protocol),
                        triton_protocol=protocol) as remote:
        assert remote.get("/readyz").status_code == 200
        response = remote.post("/v1/segment", params=params, content=image)
        got = label_of(response)
        assert response.headers["x-model-version"] == str(meta.version)
        assert remote.get("/v1/models").json()  # lists the models of the repository
    assert got.shape == (60, 80)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 1, "a constant mask would prove little"


def test_gateway_answers_503_while_triton_is_down_and_recovers_by_itself(triton_server, repository, meta, caplog):
    image = scene_png(meta)
    params = {"model": meta.name, "output": "label"}
    with gateway_client(repository, backend="triton", triton_url=triton_server.http_url, triton_timeout=5) as client:
        before = label_of(client.post("/v1/segment", params=params, content=image))
        triton_server.kill()
        try:
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "not reachable" in ready.json()["reason"]
            start = time.monotonic()
            down = client.post("/v1/segment", params=params, content=image)
            assert down.status_code == 503, down.text
            assert down.json()["error"] == "backend_unavailable"
            # The public answer names no internal host or library message (issue 10); the log has both,
            # under the incident id the answer gives.
            detail = down.json()["detail"]
            assert "Triton at" not in detail and triton_server.http_url.rsplit(":", 1)[-1] not in detail
            incident = detail.split("incident ")[1].split(")")[0]
            assert any(incident in r.getMessage() and "Triton at" in r.getMessage() and "unreachable" in r.getMessage()
                       for r in caplog.records)
            assert "retry-after" in down.headers
            assert time.monotonic() - start < 3.0
            assert client.get("/healthz").status_code == 200  # the gateway itself is alive
        finally:
            triton_server.start()
        assert client.get("/readyz").status_code == 200
        after = label_of(client.post("/v1/segment", params=params, content=image))
        np.testing.assert_array_equal(after, before)


def republish(repository: ModelRepository, name: str) -> int:
    """Publish a copy of the served version of `name` as the next version; returns its number."""
    source = repository.version_dir(name, repository.served_version(name))
    meta = repository.read_metadata(name)

    def populate(staging: Path) -> ModelMetadata:
        for child in source.iterdir():
            if child.is_file() and child.name != "sceneparse.json":
                shutil.copy2(child, staging / child.name)
        return dataclasses.replace(meta)

    return repository.publish_version(name, populate)[0]


def shifted_onnx(source: Path, target: Path, output_name: str, num_classes: int) -> None:
    """Copy `source` with +20 added to class 0's logits: a new version whose masks differ."""
    model = onnx.load(str(source))
    graph = model.graph
    raw = f"{output_name}_before_shift"
    for node in graph.node:
        node.output[:] = [raw if name == output_name else name for name in node.output]
    shift = np.zeros((1, num_classes, 1, 1), dtype=np.float32)
    shift[0, 0] = 20.0
    graph.initializer.append(onnx.numpy_helper.from_array(shift, "class0_shift"))
    graph.node.append(onnx.helper.make_node("Add", [raw, "class0_shift"], [output_name]))
    onnx.save(model, str(target))


@pytest.mark.parametrize("protocol", ["grpc"])
def test_load_model_makes_triton_serve_a_newly_published_version(protocol, triton_server, repository, meta):
    url = triton_server.url(protocol)
    source_dir = repository.version_dir(meta.name, meta.version)

    def populate(staging: Path) -> ModelMetadata:
        for child in source_dir.iterdir():
            if child.is_file() and child.name not in {"sceneparse.json", meta.files["onnx"]}:
                (staging / child.name).write_bytes(child.read_bytes())
        shifted_onnx(source_dir / meta.files["onnx"], staging / meta.files["onnx"], meta.output_name, meta.num_classes)
        return dataclasses.replace(meta)

    new_version, _ = repository.publish_version(meta.name, populate)
    new_meta = repository.read_metadata(meta.name, new_version)
    triton_server.sync()
    backend = TritonBackend(url, protocol, timeout_s=10.0)
    try:
        runner = backend.open(repository, new_meta)
        # Explicit mode: a published version is not served before the load request.
        assert not backend.model_ready(new_meta)
        with pytest.raises(BackendUnavailable, match=f"version {new_version} is not ready"):
            runner(random_batch(meta, 1))
        load_model(url, meta.name, protocol)
        assert backend.model_ready(new_meta)
        batch = random_batch(meta, 2, seed=11)
        new_reference = LocalOnnxRuntime(repository.model_file(meta.name, new_version), new_meta)
        logits = runner(batch)
        np.testing.assert_allclose(logits, new_reference(batch), rtol=1e-5, atol=1e-5)
        assert (logits.argmax(axis=1) == 0).all(), "the new version's logits favour class 0"
    finally:
        backend.close()


def test_poll_mode_picks_up_a_published_version_without_a_load_request(triton_server_factory, repository, tmp_path):
    name = repository.list_models()[0]
    copy = ModelRepository(tmp_path / "repository")  # this one model only: a quicker start
    shutil.copytree(repository.model_dir(name), copy.root / name, ignore=shutil.ignore_patterns(".tmp-*", ".publish.lock"))
    server = triton_server_factory(copy, control_mode="poll")
    newest = copy.served_version(name)
    assert server.model_ready(name, newest)
    with pytest.raises(TritonError, match="not allowed if polling is enabled"):
        load_model(server.http_url, name, "http")
    new_version = republish(copy, name)
    server.sync()
    deadline = time.monotonic() + 20
    while not server.model_ready(name, new_version) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.model_ready(name, new_version), server.log_tail()
    server.stop()
