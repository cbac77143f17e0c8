"""The web page at `/`, end to end: Debian's headless Chromium driven by Playwright against real uvicorn."""

from __future__ import annotations

import io
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serving.conftest import encode, scene_array
from tests.serving.gateway_process import GatewayProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing and CI is set: install it with scripts/install_chromium.sh")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def gateway(gateway_source_repository, tmp_path_factory):
    server = GatewayProcess(gateway_source_repository.root, tmp_path_factory.mktemp("web") / "gateway.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_upload_shows_photo_overlay_mask_and_legend(browser, gateway, tmp_path, model_name):
    photo = tmp_path / "street.png"
    photo.write_bytes(encode(scene_array(60, 80)))
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(gateway.url + "/")
    page.wait_for_selector(f"#model option[value='{model_name}']", state="attached")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#legend .legend-item", timeout=30_000)

    assert page.is_visible("#results")
    for image_id in ("photo", "overlay", "mask"):
        # naturalWidth is 0 until the browser has decoded the image.
        page.wait_for_function(f"document.getElementById('{image_id}').naturalWidth > 0")
        size = page.evaluate(f"[document.getElementById('{image_id}').naturalWidth, "
                             f"document.getElementById('{image_id}').naturalHeight]")
        assert size == [80, 60], image_id
    names = page.locator("#legend .name").all_text_contents()
    fractions = page.locator("#legend .fraction").all_text_contents()
    assert names and len(names) == len(set(names))
    assert sum(float(text.rstrip("%")) for text in fractions) == pytest.approx(100.0, abs=0.2 * len(fractions))
    swatch = page.locator("#legend .swatch").first.evaluate("el => getComputedStyle(el).backgroundColor")
    assert swatch.startswith("rgb(")
    assert model_name in page.text_content("#status")
    # Another model re-segments the same photo.
    other = [name for name in page.eval_on_selector_all("#model option", "els => els.map(e => e.value)")
             if name != model_name]
    if other:
        page.select_option("#model", other[0])
        page.wait_for_function(f"document.getElementById('status').textContent.startsWith('{other[0]} v')")
    assert errors == []
    page.close()


def test_bad_file_shows_the_error(browser, gateway, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_bytes(b"this is not an image at all")
    page = browser.new_page()
    page.goto(gateway.url + "/")
    page.set_input_files("#file", str(bogus))
    page.wait_for_selector("#status.error", timeout=30_000)
    assert "invalid_image" in page.text_content("#status")
    assert page.is_hidden("#results")
    page.close()


def test_mask_pixels_match_the_api(browser, gateway, tmp_path, model_name):
    """The page shows exactly the mask the API returns (read back through a canvas)."""
    data = encode(scene_array(40, 52, seed=3))
    (tmp_path / "scene.png").write_bytes(data)
    page = browser.new_page()
    page.goto(gateway.url + "/")
    page.wait_for_selector(f"#model option[value='{model_name}']", state="attached")
    page.set_input_files("#file", str(tmp_path / "scene.png"))
    page.wait_for_selector("#legend .legend-item", timeout=30_000)
    page.wait_for_function("document.getElementById('mask').naturalWidth > 0")
    shown = page.evaluate("""() => {
        const img = document.getElementById('mask');
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const ctx = canvas.getContext('2d');
        ctx.drawImage(img, 0, 0);
        return Array.from(ctx.getImageData(0, 0, canvas.width, canvas.height).data);
    }""")
    page.close()
    response = httpx.post(f"{gateway.url}/v1/segment", params={"model": model_name}, content=data, timeout=30)
    expected = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))
    assert np.array_equal(np.asarray(shown, dtype=np.uint8).reshape(expected.shape), expected)


def test_dropping_an_image_on_the_page_segments_it(browser, gateway):
    page = browser.new_page()
    page.goto(gateway.url + "/")
    page.wait_for_selector("#model option", state="attached")
    data = list(encode(scene_array(30, 42, seed=5)))
    page.evaluate("""(bytes) => {
        const file = new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" });
        const transfer = new DataTransfer();
        transfer.items.add(file);
        const zone = document.getElementById("dropzone");
        zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }""", data)
    page.wait_for_selector("#legend .legend-item", timeout=30_000)
    page.wait_for_function("document.getElementById('mask').naturalWidth === 42")
    assert "42×30" in page.text_content("#status")
    page.close()


def test_api_docs_render_with_no_network(browser, gateway):
    """Swagger UI at /docs comes from the gateway itself: every request the page makes stays local."""
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(gateway.url + "/docs")
    page.wait_for_selector("#swagger-ui .opblock-summary-path", timeout=30_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.textContent.trim())")
    assert "/v1/segment" in paths
    page.close()
    assert requested and all(url.startswith(gateway.url) for url in requested), requested
