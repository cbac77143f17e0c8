"""POST /v1/segment takes a lease on a model version and a place in the worker pool; whatever fails
before the job reaches a worker gives both back, and once it has, the pool gives them back when the
job's thread is done (serving/api/routes/segment.py hands them over with an ExitStack)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import serving.api.routes.segment as segment_route
from serving.main import create_app
from serving.settings import Settings
from tests.serving.conftest import json_body


@pytest.fixture
def client(gateway_source_repository):
    settings = Settings(repository=gateway_source_repository.root, poll_interval=0, ort_threads=1, workers=1,
                        queue_size=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def held(client: TestClient, model: str) -> tuple[int, int]:
    """(leases on the model's loaded version, places taken in the pool)."""
    gateway = client.app.state.gateway
    return gateway.manager.get(model).leases, gateway.pool.admitted


def test_a_failure_before_the_hand_over_gives_back_the_lease_and_the_place(client, model_name, scene_png,
                                                                            monkeypatch):
    assert client.post("/v1/segment", content=scene_png).status_code == 200
    assert held(client, model_name) == (0, 0)

    def broken_job(*args, **kwargs):
        raise RuntimeError("building the job failed")  # after the lease and the place were taken

    monkeypatch.setattr(segment_route, "_segment_job", broken_job)
    assert client.post("/v1/segment", content=scene_png).status_code == 500
    assert held(client, model_name) == (0, 0)


def test_a_full_pool_gives_back_the_lease(client, model_name, scene_png):
    place = client.app.state.gateway.pool.reserve()  # the only place (1 worker, no queue)
    try:
        refused = client.post("/v1/segment", content=scene_png)
        assert refused.status_code == 503 and json_body(refused)["error"] == "queue_full"
        assert held(client, model_name) == (0, 1)
    finally:
        place.release()
    assert client.post("/v1/segment", content=scene_png).status_code == 200
    assert held(client, model_name) == (0, 0)
