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
    for image_id in ("photo", "overlay", "mask", "confidence"):
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


# --- the confidence view and the class filter, drawn in the page from one label answer ------------
READ_PIXELS = """(id) => {
    const img = document.getElementById(id);
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    return Array.from(ctx.getImageData(0, 0, canvas.width, canvas.height).data);
}"""


def shown(page, image_id: str, shape: tuple[int, int]) -> np.ndarray:
    """The RGBA pixels the page shows in <img id=image_id>."""
    return np.asarray(page.evaluate(READ_PIXELS, image_id), dtype=np.uint8).reshape(*shape, 4)


def api_rgba(gateway, data: bytes, model: str, **params) -> np.ndarray:
    response = httpx.post(f"{gateway.url}/v1/segment", params={"model": model, **params}, content=data, timeout=30)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))


@pytest.fixture
def segmented_page(browser, gateway, tmp_path, model_name):
    """A page that has segmented one 44x56 PNG; yields (page, image bytes, /v1/segment requests made)."""
    data = encode(scene_array(44, 56, seed=9))
    (tmp_path / "scene.png").write_bytes(data)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url) if "/v1/segment" in request.url else None)
    page.goto(gateway.url + "/")
    page.wait_for_selector(f"#model option[value='{model_name}']", state="attached")
    page.set_input_files("#file", str(tmp_path / "scene.png"))
    page.wait_for_selector("#legend .legend-item", timeout=30_000)
    for image_id in ("mask", "overlay", "confidence"):
        page.wait_for_function(f"document.getElementById('{image_id}').naturalWidth === 56")
    yield page, data, requests
    assert errors == []
    page.close()


def test_the_views_equal_the_apis_outputs(segmented_page, gateway, model_name):
    page, data, requests = segmented_page
    assert len(requests) == 1
    assert np.array_equal(shown(page, "confidence", (44, 56)), api_rgba(gateway, data, model_name, output="confidence"))
    assert np.array_equal(shown(page, "mask", (44, 56)), api_rgba(gateway, data, model_name, output="color"))
    assert np.array_equal(shown(page, "overlay", (44, 56)),
                          api_rgba(gateway, data, model_name, output="overlay", alpha=0.5))


def _wait_for_new_src(page, image_id: str, before: str) -> None:
    page.wait_for_function(f"document.getElementById('{image_id}').src !== {before!r} && "
                           f"document.getElementById('{image_id}').complete")


def test_clicking_legend_entries_filters_classes_in_the_page_without_a_request(segmented_page, gateway, model_name):
    page, data, requests = segmented_page
    ids = [int(v) for v in page.eval_on_selector_all("#legend .legend-item", "els => els.map(e => e.dataset.classId)")]
    assert len(ids) >= 2
    hide = ids[0]
    kept = ",".join(str(i) for i in ids if i != hide)
    sources = {image_id: page.get_attribute(f"#{image_id}", "src") for image_id in ("mask", "overlay", "confidence")}
    page.click(f"#legend .legend-item[data-class-id='{hide}']")
    for image_id, before in sources.items():
        _wait_for_new_src(page, image_id, before)
    assert page.get_attribute(f"#legend .legend-item[data-class-id='{hide}']", "aria-pressed") == "false"
    assert page.is_visible("#show-all")
    # The same pixels as asking the API for the other classes.
    assert np.array_equal(shown(page, "mask", (44, 56)), api_rgba(gateway, data, model_name, output="color",
                                                                  classes=kept))
    assert np.array_equal(shown(page, "overlay", (44, 56)),
                          api_rgba(gateway, data, model_name, output="overlay", alpha=0.5, classes=kept))
    assert np.array_equal(shown(page, "confidence", (44, 56)),
                          api_rgba(gateway, data, model_name, output="confidence", classes=kept))
    # Shown again: the unfiltered views.
    before = page.get_attribute("#mask", "src")
    page.click("#show-all")
    _wait_for_new_src(page, "mask", before)
    assert np.array_equal(shown(page, "mask", (44, 56)), api_rgba(gateway, data, model_name, output="color"))
    assert page.is_hidden("#show-all")
    assert len(requests) == 1  # drawn in the page, never re-run on the server


def test_the_opacity_slider_redraws_the_overlay_without_a_request(segmented_page, gateway, model_name):
    page, data, requests = segmented_page
    before = page.get_attribute("#overlay", "src")
    page.eval_on_selector("#alpha", "el => { el.value = '0.35'; el.dispatchEvent(new Event('input')); }")
    _wait_for_new_src(page, "overlay", before)
    assert np.array_equal(shown(page, "overlay", (44, 56)),
                          api_rgba(gateway, data, model_name, output="overlay", alpha=0.35))
    assert len(requests) == 1
