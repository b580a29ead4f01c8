"""The API pages, ``/docs`` (Swagger UI) and ``/redoc``, served with their scripts, styles
and icon from this server (``/docs/assets``, the files the ``fastapi-offline`` package
ships), never from a CDN."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = "/docs/assets"
"""Where the API pages' scripts, styles and icon are served (no API key needed)."""
DOCS_ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def docs_assets_dir() -> Path:
    """The Swagger UI and ReDoc files shipped by the ``fastapi-offline`` package."""
    directory = Path(fastapi_offline.__file__).parent / "static"
    missing = [f for f in DOCS_ASSET_FILES if not (directory / f).is_file()]
    if missing:
        raise RuntimeError(
            f"fastapi-offline at {directory} lacks {', '.join(missing)}: reinstall the "
            "service extra (scripts/setup_reranker_venv.sh)"
        )
    return directory


def add_routes(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets on ``app`` (built with ``docs_url`` and
    ``redoc_url`` None), under the root path the app is served at."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_dir()), name="docs-assets")

    def assets_url(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{DOCS_ASSETS}/{name}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=assets_url(request, "swagger-ui-bundle.js"),
            swagger_css_url=assets_url(request, "swagger-ui.css"),
            swagger_favicon_url=assets_url(request, "favicon.png"),
            oauth2_redirect_url=None,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=assets_url(request, "redoc.standalone.js"),
            redoc_favicon_url=assets_url(request, "favicon.png"),
            with_google_fonts=False,
        )
