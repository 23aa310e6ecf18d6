"""The single web page and its script and style, outside /api and its token: the page asks for the token."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

router = APIRouter()
_WEB = resources.files("imagedb") / "web"


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> HTMLResponse:
    return HTMLResponse((_WEB / "index.html").read_text(encoding="utf-8"))


def static_files() -> StaticFiles:
    return StaticFiles(directory=str(_WEB))
