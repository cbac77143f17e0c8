"""API keys on every route the app has, found by walking `app.routes` (included routers and mounted
sub-apps too), so a route added later is covered without anyone editing a list; and exact keys:
every near miss of a key is refused.

The public routes are the documented ones (docs/security.md): `/healthz` and `/readyz`. Admin
routes are those under `/v1/admin/`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from serving.main import create_app
from serving.settings import Settings

USER, ADMIN = "user-key-1", "admin-key-1"
PUBLIC = {("/healthz", "GET"), ("/readyz", "GET")}
ADMIN_PREFIX = "/v1/admin/"


def endpoints(routes: Iterable, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path template, method) of every HTTP endpoint under `routes`, recursively.

    Covers plain routes, FastAPI's included routers (kept as one object that holds the router
    since FastAPI 0.16x: `original_router` plus the include prefix), and mounts: a mounted app with
    routes is walked, one without (StaticFiles, any ASGI app) is one GET endpoint for its subtree.
    Anything else fails, so a new kind of route cannot slip past the check unseen.
    """
    for route in routes:
        if hasattr(route, "original_router"):
            yield from endpoints(route.original_router.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Mount):
            if route.routes:
                yield from endpoints(route.routes, prefix + route.path)
            else:
                yield prefix + route.path + "/{path}", "GET"
        elif isinstance(route, Route) or hasattr(route, "methods"):
            for method in sorted(route.methods or ()):
                yield prefix + route.path, method
        elif isinstance(route, WebSocketRoute):
            raise AssertionError(f"websocket route {prefix + route.path}: extend this check to websockets")
        else:
            raise AssertionError(f"route {route!r} of an unknown kind: extend endpoints() to walk it")


def concrete(path: str, model: str) -> str:
    """The template with each `{param}` filled: the model for a model name, `x` otherwise."""
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: model if m.group(1) in {"name", "model"} else "x", path)


def auth_problems(client: TestClient, path: str, method: str) -> list[str]:
    """What is wrong with the key check of one endpoint (empty: nothing)."""
    problems = []

    def status(headers: dict[str, str] | None = None) -> int:
        return client.request(method, path, headers=headers or {}).status_code

    if (path, method) in PUBLIC:
        return [f"public route answers {code} without a key"] if (code := status()) in {401, 403} else []
    for label, headers in (("no key", None), ("a wrong X-API-Key", {"X-API-Key": "wrong"}),
                           ("a wrong bearer token", {"Authorization": "Bearer wrong"})):
        if (code := status(headers)) != 401:
            problems.append(f"{label}: {code}, not 401")
    user = status({"X-API-Key": USER})
    if path.startswith(ADMIN_PREFIX):
        if user != 403:
            problems.append(f"a user key on an admin route: {user}, not 403")
    elif user in {401, 403}:
        problems.append(f"a user key: {user}")
    for headers in ({"X-API-Key": ADMIN}, {"Authorization": f"Bearer {ADMIN}"}):
        if (code := status(headers)) in {401, 403}:
            problems.append(f"the admin key ({next(iter(headers))}): {code}")
    return problems


def _settings(root) -> Settings:
    return Settings(repository=root, poll_interval=0, ort_threads=1, api_keys=[USER, "user-key-2"],
                    admin_keys=[ADMIN])


# Collected from the app itself: a route added to the gateway is a new case here by itself.
ROUTES = sorted(set(endpoints(create_app(_settings("model_repository")).routes)))


@pytest.fixture(scope="module")
def client(gateway_source_repository):
    with TestClient(create_app(_settings(gateway_source_repository.root))) as client:
        yield client


def test_the_walk_finds_every_kind_of_route():
    # A walk that silently found nothing would pass every case below.
    paths = {path for path, _ in ROUTES}
    assert {"/v1/segment", "/v1/models", "/v1/models/{name}/legend", "/v1/admin/reload", "/metrics", "/",
            "/docs/assets/{file_name}", "/static/{file_name}", "/openapi.json", "/healthz", "/readyz"} <= paths
    assert ("/v1/segment", "POST") in ROUTES and ("/v1/admin/reload", "POST") in ROUTES


@pytest.mark.parametrize(("path", "method"), ROUTES, ids=[f"{m} {p}" for p, m in ROUTES])
def test_every_route_checks_the_key(client, model_name, path, method):
    assert auth_problems(client, concrete(path, model_name), method) == []


def test_a_route_added_later_is_checked_without_editing_a_list(tmp_path):
    """A route or sub-app added without the key dependency is found by the walk and reported."""
    app = create_app(_settings(tmp_path))
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "a.txt").write_text("secret")

    @app.get("/v1/forgotten")
    async def forgotten() -> dict[str, str]:
        return {"open": "yes"}

    app.mount("/files", StaticFiles(directory=tmp_path / "static"))
    found = set(endpoints(app.routes))
    assert {("/v1/forgotten", "GET"), ("/files/{path}", "GET")} <= found - set(ROUTES)
    client = TestClient(app)
    assert "no key: 200, not 401" in auth_problems(client, "/v1/forgotten", "GET")
    assert "no key: 200, not 401" in auth_problems(client, "/files/a.txt", "GET")


# --- exact keys ----------------------------------------------------------------------------------
NEAR_MISSES = {
    "prefix": USER[:-1],
    "extension": USER + "0",
    "another case": USER.upper(),
    "leading space": " " + USER,
    "trailing space": USER + " ",
    "spaces around": f"  {USER}  ",
    "tab around": f"\t{USER}\t",
    # A no-break space survives HTTP (it is not optional whitespace) but str.strip() removes it.
    "no-break spaces around": f"\xa0{USER}\xa0",
    "empty": "",
}


def _header(value: str) -> bytes:
    return value.encode("latin-1")  # what the gateway decodes header bytes with


@pytest.mark.parametrize("key", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_near_misses_of_a_key_are_refused(client, key):
    attempts = [[("X-API-Key", _header(key))]]
    if key.lstrip(" ") != USER:  # spaces after the scheme separate it from the token (RFC 7235)
        attempts.append([("Authorization", _header(f"Bearer {key}"))])
    for headers in attempts:
        response = client.get("/v1/models", headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"] == "unauthorized"
    # The page also takes Basic credentials: the same exactness there.
    basic = base64.b64encode(f"anyone:{key}".encode()).decode()
    assert client.get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 401
    # The exact key passes, as a header and as a bearer token (the scheme may be followed by spaces).
    for headers in ({"X-API-Key": USER}, {"Authorization": f"Bearer {USER}"}, {"Authorization": f"Bearer   {USER}"}):
        assert client.get("/v1/models", headers=headers).status_code == 200, headers


@pytest.mark.parametrize("key", [ADMIN[:-1], ADMIN + "0", ADMIN.upper(), f" {ADMIN} "], ids=["prefix", "extension",
                                                                                        "case", "spaces"])
def test_near_misses_of_an_admin_key_are_refused(client, key):
    response = client.get("/v1/admin/status", headers=[("X-API-Key", _header(key))])
    assert response.status_code == 401, response.text
    assert client.get("/v1/admin/status", headers={"X-API-Key": ADMIN}).status_code == 200


TWO_KEYS = {
    "the key, then a wrong one": [("X-API-Key", USER), ("X-API-Key", "wrong")],
    "a wrong key, then the key": [("X-API-Key", "wrong"), ("X-API-Key", USER)],
    "the key twice": [("X-API-Key", USER), ("X-API-Key", USER)],
    "header and bearer": [("X-API-Key", USER), ("Authorization", f"Bearer {USER}")],
    "empty header and bearer": [("X-API-Key", ""), ("Authorization", f"Bearer {USER}")],
    "two bearer headers": [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {USER}")],
}


@pytest.mark.parametrize("headers", TWO_KEYS.values(), ids=TWO_KEYS.keys())
def test_two_key_headers_are_refused(client, headers):
    response = client.get("/v1/models", headers=headers)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized", response.text
    assert "one key" in response.json()["detail"]


def test_two_keys_on_admin_routes_and_the_page_are_refused(client):
    # A user key beside the admin key must not open an admin route, in either order.
    for headers in ([("X-API-Key", ADMIN), ("X-API-Key", USER)], [("X-API-Key", USER), ("X-API-Key", ADMIN)]):
        assert client.post("/v1/admin/reload", headers=headers).status_code == 401
    basic = base64.b64encode(f"anyone:{USER}".encode()).decode()
    both = [("Authorization", f"Basic {basic}"), ("X-API-Key", "wrong")]
    assert client.get("/", headers=both).status_code == 401
