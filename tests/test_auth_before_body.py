"""With `imagedb serve --token`, a request without the token is refused before its body is read (issue #22,
item 4): FastAPI reads and spools a multipart upload before it runs the route's token dependency, so 30 clients
without a token once held 570 MB of temporary files."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imagedb.api import create_app

TOKEN = "s3cret-token"
CHUNK = b"\0" * 2**20
CHUNKS = 8


def _post(database_url: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """POSTs an 8 MB multipart upload to the application directly (no HTTP client buffers it first); returns the
    status and how many body bytes the application asked for."""
    app = create_app(database_url, token=TOKEN)
    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    parts = [head, *([CHUNK] * CHUNKS), b"\r\n--x--\r\n"]
    consumed = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        if not parts:
            return {"type": "http.disconnect"}
        body = parts.pop(0)
        consumed += len(body)
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    length = str(sum(len(p) for p in parts)).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/search/image", "raw_path": b"/api/search/image", "query_string": b"", "root_path": "",
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
        "headers": [
            (b"host", b"localhost"), (b"content-type", b"multipart/form-data; boundary=x"),
            (b"content-length", length), *headers,
        ],
    }  # fmt: skip
    try:
        asyncio.run(app(scope, receive, send))
    finally:
        app.state.imagedb.close()
    return status, consumed


@pytest.mark.parametrize(
    "headers",
    [[], [(b"authorization", b"Bearer wrong")], [(b"authorization", b"Basic " + TOKEN.encode())]],
    ids=["no token", "wrong token", "other scheme"],
)
def test_an_upload_without_the_token_is_refused_unread(database_url: str, headers: list[tuple[bytes, bytes]]) -> None:
    status, consumed = _post(database_url, headers)
    assert status == 401
    assert consumed == 0  # before: all 8 MB were read and spooled, then 401


def test_an_upload_with_the_token_is_read(database_url: str) -> None:
    status, consumed = _post(database_url, [(b"authorization", b"Bearer " + TOKEN.encode())])
    assert consumed > CHUNKS * len(CHUNK)  # read whole; not an image, so refused after reading
    assert status != 401
