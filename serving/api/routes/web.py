"""The web page at `/`, its static files, and the OpenAPI documents (behind API keys when set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from serving.api.deps import PageKey
from serving.api.errors import ApiError

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
_MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
                ".png": "image/png"}
# Swagger UI's script and style ship inside the fastapi-offline wheel, so /docs works with no network
# (FastAPI's default page loads them from a CDN).
SWAGGER_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")


def swagger_assets_dir() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).resolve().parent / "static"

router = APIRouter(dependencies=[PageKey], include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/static/{file_name}")
async def static_file(file_name: str) -> FileResponse:
    # Only plain files directly in static/: no sub-paths, no dot files.
    path = STATIC_DIR / file_name
    if "/" in file_name or file_name.startswith(".") or path.suffix not in _MEDIA_TYPES or not path.is_file():
        raise ApiError(404, "not_found", f"no static file {file_name!r}")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix])


@router.get("/openapi.json")
async def openapi(request: Request) -> dict[str, Any]:
    return request.app.openapi()


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title=f"{request.app.title} - API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js", swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon.png")


@router.get("/docs/assets/{file_name}")
async def docs_asset(file_name: str) -> FileResponse:
    if file_name not in SWAGGER_ASSETS:
        raise ApiError(404, "not_found", f"no documentation asset {file_name!r}")
    path = swagger_assets_dir() / file_name
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix])
