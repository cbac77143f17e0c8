"""The web page on a gateway with keys, in headless Chromium: the browser's Basic login opens the
page, the API refuses those cached credentials, and the page asks for the key and sends it as X-API-Key."""

from __future__ import annotations

import pytest

from tests.serving.conftest import encode, scene_array
from tests.serving.gateway_process import GatewayProcess
from tests.serving.test_web_page import browser  # noqa: F401 - the shared Chromium fixture

pytestmark = pytest.mark.browser
KEY = "page-user-key-123"


@pytest.fixture(scope="module")
def keyed_gateway(gateway_source_repository, tmp_path_factory):
    folder = tmp_path_factory.mktemp("web-keys")
    (folder / "keys").write_text(KEY + "\n")
    server = GatewayProcess(gateway_source_repository.root, folder / "gateway.log", api_keys_file=folder / "keys")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_login_opens_the_page_and_the_page_sends_the_key_itself(browser, keyed_gateway, tmp_path,  # noqa: F811
                                                                model_name):
    context = browser.new_context(http_credentials={"username": "me", "password": KEY})
    page = context.new_page()
    sent: list[dict[str, str]] = []
    page.on("request", lambda request: sent.append({"url": request.url, **request.headers})
            if "/v1/" in request.url else None)
    response = page.goto(keyed_gateway.url + "/")
    assert response.status == 200  # the Basic login opened the page
    # The API does not take the cached Basic credentials: the page asks for the key.
    page.wait_for_selector("#keyform", state="visible", timeout=30_000)
    page.fill("#apikey", KEY)
    page.click("#keyform button")
    page.wait_for_selector(f"#model option[value='{model_name}']", state="attached", timeout=30_000)
    photo = tmp_path / "street.png"
    photo.write_bytes(encode(scene_array(60, 80)))
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#legend .legend-item", timeout=30_000)
    assert page.is_hidden("#keyform")
    api_calls = [headers for headers in sent if "/v1/" in headers["url"]]
    assert any(headers.get("x-api-key") == KEY and "/v1/segment" in headers["url"] for headers in api_calls)
    assert not any("authorization" in headers for headers in api_calls)
    context.close()
