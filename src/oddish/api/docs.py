"""Swagger UI (/docs) and ReDoc (/redoc) from assets shipped in the package: the API's
documentation works on a machine without internet (FastAPI's defaults load them from a CDN).

The assets are swagger-ui-dist and redoc's standalone bundle from npm, as published, with their
licences (``static/swagger-ui``, ``static/redoc``)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/api-assets"
ASSETS_DIR = Path(__file__).with_name("static")
DOCS_PATH = "/docs"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
REDOC_PATH = "/redoc"
# The pages may load nothing from another host: ReDoc's sidebar shows a logo from its CDN, which
# the browser does not ask for under this policy. (Swagger UI starts from an inline script.)
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'"
)


def _offline(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_POLICY
    return page


def add_docs(app: FastAPI) -> None:
    """Serve /docs, its OAuth2 redirect and /redoc on ``app`` (made with docs_url=None and
    redoc_url=None), every asset from ASSETS_PATH."""
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="api-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _offline(
            get_swagger_ui_html(
                openapi_url=openapi_url,
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{ASSETS_PATH}/swagger-ui/swagger-ui-bundle.js",
                swagger_css_url=f"{ASSETS_PATH}/swagger-ui/swagger-ui.css",
                swagger_favicon_url=f"{ASSETS_PATH}/swagger-ui/favicon-32x32.png",
                oauth2_redirect_url=OAUTH2_REDIRECT_PATH,
            )
        )

    @app.get(OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _offline(
            get_redoc_html(
                openapi_url=openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{ASSETS_PATH}/redoc/redoc.standalone.js",
                redoc_favicon_url=f"{ASSETS_PATH}/swagger-ui/favicon-32x32.png",
                with_google_fonts=False,
            )
        )
