"""pytest fixtures for a real tritonserver (registered in tests/conftest.py, so every test can use them).

- `tritonserver_dist`: the unpacked nvidia-pytriton wheel; skips when it is missing, fails under CI.
- `triton_source_repository`: a private copy of the export fixture `tiny_repository` (or, while
  that fixture does not exist, a stand-in built here), so tests may publish into it.
- `triton_server`: one TritonServer per test module over a python-backend mirror of it, in
  explicit model-control mode. Its log is printed when a test of the module fails.
- `triton_server_factory`: for tests that need their own server (another repository or mode).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.repository import ModelRepository
from tests.serving.triton.harness import TritonServer, pytriton_dist, tritonserver_binary


@pytest.fixture(scope="session")
def tritonserver_dist() -> Path:
    binary = tritonserver_binary()
    if not binary.is_file():
        reason = (f"tritonserver binary not found at {binary}: run `make test-deps` "
                  "(scripts/fetch_tritonserver.sh .cache/pytriton)")
        if os.environ.get("CI"):
            pytest.fail(reason + " -- CI is set, so the real-Triton tests must run")
        pytest.skip(reason)
    return pytriton_dist()


@pytest.fixture(scope="module")
def triton_source_repository(request, tmp_path_factory) -> ModelRepository:
    """A writable model repository with at least one published model (production layout)."""
    root = tmp_path_factory.mktemp("triton-source")
    try:
        shared = request.getfixturevalue("tiny_repository")
    except pytest.FixtureLookupError:
        shared = None
    if shared is None:
        from tests.serving.triton.tiny_model import publish_tiny_model

        repository = ModelRepository(root / "repository")
        publish_tiny_model(repository)
        return repository
    # Copy (models are small), so publishing here never changes the shared session fixture.
    source = Path(getattr(shared, "root", shared))
    shutil.copytree(source, root / "repository", symlinks=False,
                    ignore=shutil.ignore_patterns(".tmp-*", ".publish.lock"))
    return ModelRepository(root / "repository")


class TritonServers:
    """Starts harness servers on demand and stops them all at teardown."""

    def __init__(self, dist: Path, tmp_path_factory: pytest.TempPathFactory):
        self.dist = dist
        self.tmp_path_factory = tmp_path_factory
        self.servers: list[TritonServer] = []

    def __call__(self, source: ModelRepository, control_mode: str = "explicit", timeout: float = 60.0) -> TritonServer:
        server = TritonServer(source, self.tmp_path_factory.mktemp("tritonserver"), control_mode, dist=self.dist)
        self.servers.append(server)
        server.prepare()
        server.start(timeout)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="module")
def triton_server_factory(tritonserver_dist, tmp_path_factory) -> Iterator[TritonServers]:
    servers = TritonServers(tritonserver_dist, tmp_path_factory)
    yield servers
    servers.stop_all()


@pytest.fixture(scope="module")
def triton_server(triton_server_factory, triton_source_repository) -> TritonServer:
    return triton_server_factory(triton_source_repository)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # A failing test that used a harness server gets the tail of that server's log in its report.
    report = yield
    factory = getattr(item, "funcargs", {}).get("triton_server_factory")
    if report.failed and isinstance(factory, TritonServers):
        for server in factory.servers:
            report.sections.append((f"tritonserver log {server.log_path}", server.log_tail()))
    return report
