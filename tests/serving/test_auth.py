"""API keys: every route but /healthz and /readyz needs one; admin routes need an admin key; the
browser's Basic login opens the web page only; keys come from files or the environment, never flags;
a non-loopback bind without keys refuses to start."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from serving.main import create_app
from serving.settings import Settings

USER, ADMIN = "user-key-1", "admin-key-1"
PAGE_GETS = ["/", "/static/app.js", "/docs", "/docs/assets/swagger-ui.css", "/openapi.json"]
API_GETS = ["/metrics", "/v1/models", "/v1/models/{model}/legend"]
PROTECTED_GETS = PAGE_GETS + API_GETS


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
def test_every_other_route_needs_a_valid_key(client, path, model_name):
    path = path.format(model=model_name)
    missing = client.get(path)
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    assert "www-authenticate" in missing.headers
    assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    for headers in ({"X-API-Key": USER}, {"Authorization": f"Bearer {USER}"},
                    {"X-API-Key": "user-key-2"}, {"X-API-Key": ADMIN}):
        assert client.get(path, headers=headers).status_code == 200, (path, headers)


@pytest.mark.parametrize("path", PAGE_GETS)
def test_the_browser_login_opens_the_page_and_its_assets(client, path):
    assert client.get(path, headers=basic(USER)).status_code == 200
    assert client.get(path, headers=basic("wrong")).status_code == 401


@pytest.mark.parametrize("path", API_GETS)
def test_the_browser_login_never_opens_the_api(client, path, model_name):
    # Basic credentials are cached and re-sent by browsers, also on cross-site requests: the API
    # and admin routes take only the X-API-Key / Bearer headers a cross-site form cannot set.
    response = client.get(path.format(model=model_name), headers=basic(USER))
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")


def test_cross_site_posts_with_cached_basic_credentials_are_refused(client, scene_png):
    assert client.post("/v1/admin/reload", headers=basic(ADMIN)).status_code == 401
    assert client.post("/v1/segment", content=scene_png, headers=basic(USER)).status_code == 401
    form = client.post("/v1/segment", files={"image": ("a.png", scene_png, "image/png")}, headers=basic(ADMIN))
    assert form.status_code == 401


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
