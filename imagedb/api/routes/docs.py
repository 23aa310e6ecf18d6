"""The interactive API documentation at /docs (Swagger UI) and the site's icon, both served from installed
packages: no CDN, so they work offline and under the page's Content-Security-Policy (no inline script: the page
that starts Swagger UI is imagedb/web/docs.js, which sends the page's token with every request it makes)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from imagedb.errors import NotFound

router = APIRouter(include_in_schema=False)
_WEB = resources.files("imagedb") / "web"
# Swagger UI 5 (OpenAPI 3.1, which FastAPI writes), as the fastapi-offline package ships it; only its files.
_SWAGGER = resources.files("fastapi_offline") / "static"
# What docs.html loads from the bundle; nothing else in its folder is served.
_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
}
_CACHE = {"Cache-Control": "max-age=86400"}


@router.get("/docs", response_class=HTMLResponse)
def docs() -> HTMLResponse:
    return HTMLResponse((_WEB / "docs.html").read_text(encoding="utf-8"))


@router.get("/docs/assets/{name}")
def asset(name: str) -> Response:
    if name not in _ASSETS:
        raise NotFound(f"no such file: {name[:100]!r}")
    return Response((_SWAGGER / name).read_bytes(), media_type=_ASSETS[name], headers=_CACHE)


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response((_WEB / "favicon.ico").read_bytes(), media_type="image/x-icon", headers=_CACHE)
