"""Optional API keys: every route but /healthz and /readyz needs one; admin routes need an admin key."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from serving.main import create_app
from serving.settings import Settings

USER, ADMIN = "user-key-1", "admin-key-1"
PROTECTED_GETS = ["/", "/static/app.js", "/docs", "/openapi.json", "/metrics", "/v1/models"]


@pytest.fixture(scope="module")
def client(gateway_source_repository):
    settings = Settings(repository=gateway_source_repository.root, poll_interval=0, ort_threads=1,
                        api_keys=[USER, "user-key-2"], admin_keys=[ADMIN])
    with TestClient(create_app(settings)) as client:
        yield client


def basic(password: str, user: str = "anyone") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_probes_need_no_key(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("path", PROTECTED_GETS)
def test_every_other_route_needs_a_valid_key(client, path):
    missing = client.get(path)
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    assert "www-authenticate" in missing.headers
    assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    for headers in ({"X-API-Key": USER}, {"Authorization": f"Bearer {USER}"}, basic(USER),
                    {"X-API-Key": "user-key-2"}, {"X-API-Key": ADMIN}):
        assert client.get(path, headers=headers).status_code == 200, (path, headers)


def test_pages_ask_the_browser_for_basic_credentials(client):
    assert client.get("/").headers["www-authenticate"].startswith("Basic")
    assert client.get("/v1/models").headers["www-authenticate"].startswith("Bearer")
    assert client.get("/", headers={"Authorization": "Basic !!!notbase64"}).status_code == 401


def test_segment_needs_a_key_before_the_body_is_read(client, scene_png):
    assert client.post("/v1/segment", content=scene_png).status_code == 401
    # Refused before the body counts: an oversized body without a key is still 401, not 413.
    assert client.post("/v1/segment", content=b"x" * (25 * 1024 * 1024)).status_code == 401
    ok = client.post("/v1/segment", content=scene_png, headers={"X-API-Key": USER})
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"


def test_admin_routes_need_an_admin_key(client):
    assert client.post("/v1/admin/reload").status_code == 401
    refused = client.post("/v1/admin/reload", headers={"X-API-Key": USER})
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    allowed = client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert allowed.status_code == 200 and allowed.json()["errors"] == {}


def test_keys_come_from_the_environment_comma_separated(monkeypatch):
    monkeypatch.setenv("SCENEPARSE_API_KEYS", " a1, b2 ,")
    monkeypatch.setenv("SCENEPARSE_ADMIN_KEYS", "root")
    monkeypatch.setenv("SCENEPARSE_CORS_ORIGINS", "https://x.example,https://y.example")
    settings = Settings()
    assert settings.api_keys == ["a1", "b2"] and settings.admin_keys == ["root"]
    assert settings.cors_origins == ["https://x.example", "https://y.example"]
    assert settings.auth_enabled
    monkeypatch.delenv("SCENEPARSE_API_KEYS")
    monkeypatch.delenv("SCENEPARSE_ADMIN_KEYS")
    assert not Settings().auth_enabled
