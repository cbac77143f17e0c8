"""Secure by default (issue 10): no anonymous exposure, keys never on a command line, public answers
without internals, and an authenticated route for the details."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest
from fastapi.testclient import TestClient

from serving import cli
from serving.main import create_app
from serving.settings import Settings, is_loopback
from tests.serving.conftest import copy_repository
from tests.serving.gateway_process import GatewayProcess

ADMIN = "admin-key-for-tests"


@pytest.fixture(autouse=True)
def _no_keys_in_the_environment(monkeypatch):
    for name in ("SCENEPARSE_API_KEYS", "SCENEPARSE_ADMIN_KEYS", "SCENEPARSE_ALLOW_ANONYMOUS", "SCENEPARSE_HOST"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "192.0.2.10", "gateway.internal", ""])
def test_a_reachable_address_without_keys_refuses_to_start(host):
    with pytest.raises(ValueError, match="SCENEPARSE_API_KEYS_FILE.*--allow-anonymous"):
        Settings(host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_key(host):
    assert is_loopback(host)
    assert not Settings(host=host).auth_enabled


def test_anonymous_exposure_must_be_asked_for(monkeypatch, tmp_path):
    assert Settings(host="0.0.0.0", allow_anonymous=True).host == "0.0.0.0"
    monkeypatch.setenv("SCENEPARSE_ALLOW_ANONYMOUS", "1")
    assert Settings(host="0.0.0.0").allow_anonymous
    monkeypatch.delenv("SCENEPARSE_ALLOW_ANONYMOUS")
    assert Settings(host="0.0.0.0", api_keys=["k"]).auth_enabled


def test_cli_names_the_setting_in_one_line(capsys, tmp_path):
    assert cli.main(["--repository", str(tmp_path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "SCENEPARSE_API_KEYS_FILE" in err and "--api-key-file" in err and "--allow-anonymous" in err


def test_keys_come_from_files(tmp_path):
    (tmp_path / "api").write_text("# rotated 2026-12\nfirst\n\nsecond, third\n")
    (tmp_path / "admin").write_text("root-key\n")
    settings = Settings(host="0.0.0.0", api_keys=["from-env"], api_keys_file=tmp_path / "api",
                        admin_keys_file=tmp_path / "admin")
    assert settings.api_keys == ["from-env", "first", "second", "third"]
    assert settings.admin_keys == ["root-key"]
    assert "first" not in repr(settings) and "root-key" not in repr(settings)
    (tmp_path / "empty").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="api_keys_file: .* holds no key"):
        Settings(api_keys_file=tmp_path / "empty")
    with pytest.raises(ValueError, match="admin_keys_file: cannot read"):
        Settings(admin_keys_file=tmp_path / "missing")


@pytest.mark.parametrize("flag", ["--api-key", "--admin-key"])
def test_a_key_on_the_command_line_is_refused_without_echoing_it(capsys, tmp_path, flag):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--repository", str(tmp_path), flag, "hunter2-secret"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "hunter2-secret" not in err and f"{flag}-file" in err
    # Not an abbreviation of --api-key-file either: that would read a file named after the secret.
    with pytest.raises(SystemExit):
        cli.main(["--repository", str(tmp_path), "--api-key-fil", "x"])


def test_ps_shows_no_secret_and_the_key_file_works(gateway_source_repository, tmp_path, scene_png):
    secret, admin_secret = "s3cr3t-user-key-4711", "s3cr3t-admin-key-0815"
    (tmp_path / "api_keys").write_text(secret + "\n")
    (tmp_path / "admin_keys").write_text(admin_secret + "\n")
    server = GatewayProcess(gateway_source_repository.root, tmp_path / "gateway.log",
                            api_keys_file=tmp_path / "api_keys", admin_keys_file=tmp_path / "admin_keys")
    try:
        server.wait_ready()
        listing = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True, check=True).stdout
        assert str(server.process.pid) in listing
        assert secret not in listing and admin_secret not in listing
        cmdline = (f"/proc/{server.process.pid}/cmdline")
        with open(cmdline, "rb") as handle:
            assert secret.encode() not in handle.read()
        assert httpx.post(f"{server.url}/v1/segment", content=scene_png, timeout=60).status_code == 401
        ok = httpx.post(f"{server.url}/v1/segment", content=scene_png, headers={"X-API-Key": secret}, timeout=60)
        assert ok.status_code == 200
        status = httpx.get(f"{server.url}/v1/admin/status", headers={"X-API-Key": admin_secret}, timeout=10)
        assert status.status_code == 200 and status.json()["ready"] is True
        assert secret not in server.log() and admin_secret not in server.log()
    finally:
        server.stop()


@pytest.fixture
def broken_repository(gateway_source_repository, tmp_path):
    """A copy of the test repository whose every model has unreadable metadata."""
    repository = copy_repository(gateway_source_repository, tmp_path / "private" / "repository")
    for name in repository.list_models():
        version_dir = repository.version_dir(name, repository.served_version(name))
        (version_dir / "sceneparse.json").write_text("{not json")
    return repository


def test_readyz_and_5xx_carry_no_paths_hosts_or_library_messages(broken_repository, tmp_path):
    settings = Settings(repository=broken_repository.root, poll_interval=0, ort_threads=1, admin_keys=[ADMIN])
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        text = ready.text
        assert ready.json()["reason"].startswith("no model is loaded")
        for leak in (str(tmp_path), "private", "sceneparse.json", "JSONDecodeError", "Expecting"):
            assert leak not in text, (leak, text)
        # The details are there for an admin.
        assert client.get("/v1/admin/status").status_code == 401
        details = client.get("/v1/admin/status", headers={"X-API-Key": ADMIN}).json()
        assert ready.json()["reason"] == "no model is loaded (2 repository entries skipped; see the log)"
        assert details["ready"] is False and details["skipped_entries"]
        assert all("sceneparse.json is not valid JSON" in problems[0]
                   for problems in details["skipped_entries"].values())
        assert details["repository"] == str(broken_repository.root)


def test_triton_address_stays_out_of_readyz(gateway_source_repository):
    settings = Settings(repository=gateway_source_repository.root, poll_interval=0, backend="triton",
                        triton_url="127.0.0.77:1", triton_timeout=0.5, admin_keys=[ADMIN])
    try:
        app = create_app(settings)
        with TestClient(app) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "127.0.0.77" not in ready.text
            details = client.get("/v1/admin/status", headers={"Authorization": f"Bearer {ADMIN}"}).json()
            assert details["backend"]["url"] == "127.0.0.77:1"
    except ImportError:
        pytest.skip("tritonclient is not installed")


def test_admin_status_is_json_for_operators(gateway_source_repository):
    settings = Settings(repository=gateway_source_repository.root, poll_interval=0, ort_threads=1)
    with TestClient(create_app(settings)) as client:
        body = client.get("/v1/admin/status").json()
    assert body["ready"] is True and body["load_errors"] == {}
    assert set(body["admission"]) >= {"admitted", "admitted_cost_bytes", "cost_budget_bytes", "uploads"}
    json.dumps(body)
