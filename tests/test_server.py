"""The HTTP API on the embedded database: search, uploads, images, auth, JSON errors, and a fuzzer."""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import GenerationMode

from imagedb.api import MAX_UPLOAD_BYTES, create_app
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.database import open_connection
from imagedb.store import Store


@pytest.fixture
def served(database_url: str, photos: Path, tiny_model: str) -> Path:
    store = Store(open_connection(database_url))
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    store.close()
    return photos


@pytest.fixture
def client(database_url: str, served: Path) -> TestClient:
    return TestClient(create_app(database_url), base_url="http://localhost")


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG")
    return buf.getvalue()


def test_text_search_details_thumbnail_original_similar(client: TestClient, served: Path) -> None:
    found = client.get("/api/search", params={"q": "a rocket + id:1", "limit": 5})
    assert found.status_code == 200, found.text
    results = found.json()["results"]
    assert len(results) == 5 and [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    first = results[0]
    thumb = client.get(first["thumbnail"])
    assert thumb.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(thumb.content)).size[0] <= 256
    info = client.get(f"/api/images/{first['id']}").json()
    assert info["path"] == first["path"] and "embedding" not in info and info["collection"] == "default"
    original = client.get(f"/api/images/{first['id']}/original")
    assert original.status_code == 200 and original.content == Path(first["path"]).read_bytes()
    similar = client.get(f"/api/images/{first['id']}/similar", params={"limit": 3}).json()["results"]
    assert len(similar) == 3 and first["id"] not in [r["id"] for r in similar]
    collections = client.get("/api/collections").json()
    assert collections[0]["collection"] == "default" and collections[0]["images"] == 12


def test_upload_search_finds_the_image_itself_first(client: TestClient, served: Path) -> None:
    data = (served / "coffee.jpg").read_bytes()
    found = client.post("/api/search/image", files={"file": ("coffee.jpg", data, "image/jpeg")}, params={"limit": 3})
    assert found.status_code == 200, found.text
    assert found.json()["results"][0]["path"] == str(served / "coffee.jpg")
    combined = client.post(
        "/api/search/image", files={"file": ("c.jpg", data, "image/jpeg")}, data={"q": '2:"a cup"'}, params={"limit": 3}
    )
    assert combined.status_code == 200


def test_upload_limits_and_bad_uploads(client: TestClient) -> None:
    too_big = client.post("/api/search/image", files={"file": ("big.bin", b"\0" * (MAX_UPLOAD_BYTES + 1))})
    assert too_big.status_code == 413 and "larger than" in too_big.json()["detail"]
    text = client.post("/api/search/image", files={"file": ("notes.jpg", b"hello", "image/jpeg")})
    assert text.status_code == 400 and "not an image" in text.json()["detail"]
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG")
    bomb = client.post("/api/search/image", files={"file": ("bomb.png", buf.getvalue(), "image/png")})
    assert bomb.status_code == 400 and "decompression bomb" in bomb.json()["detail"]


def test_errors_are_json_with_a_message(client: TestClient) -> None:
    cases = [
        ("/api/search?q=x&collection=nope", 404, "no collection named 'nope'"),
        ("/api/search?q=a%20%2B", 400, "cannot end with an operator"),
        ("/api/search?q=id:%C2%B2", 400, "id: needs a number"),  # a superscript two
        ("/api/search?q=id:1%C2%B2", 400, "id: needs a number"),
        ("/api/search?q=/etc/passwd", 400, "image paths are not accepted here"),
        ("/api/search?q=/no/such/file.jpg", 400, "image paths are not accepted here"),
        ("/api/search?q=x&attr=novalue", 400, "expected key=value"),
        ("/api/images/999999", 404, "no image with id 999999"),
        ("/api/images/999999/original", 404, "no image with id 999999"),
        ("/api/search?q=x&limit=0", 422, ""),
    ]
    for url, status, words in cases:
        response = client.get(url)
        assert response.status_code == status, (url, response.text)
        assert response.headers["content-type"] == "application/json"
        assert words in str(response.json()["detail"])


def test_only_stored_paths_reach_the_filesystem(client: TestClient, served: Path) -> None:
    for url in ("/api/images/..%2F..%2Fetc%2Fpasswd/original", "/static/../pyproject.toml", "/api/images/-1/original"):
        assert client.get(url).status_code in (404, 422)
    (served / "rocket.jpg").unlink()  # stored, then gone
    rocket = client.get("/api/search", params={"q": "x", "limit": 12}).json()["results"]
    gone = next(r for r in rocket if r["path"].endswith("rocket.jpg"))
    assert client.get(f"/api/images/{gone['id']}/original").status_code == 404


def test_token_is_required_on_every_api_route(database_url: str, served: Path) -> None:
    client = TestClient(create_app(database_url, token="s3cret"))
    for url in ("/api/search?q=x", "/api/collections", "/api/images/1", "/api/images/1/thumbnail"):
        assert client.get(url).status_code == 401
        assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "<title>imagedb</title>" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_the_page_needs_no_internet(client: TestClient) -> None:
    page = client.get("/").text + client.get("/static/app.js").text + client.get("/static/style.css").text
    assert "http://" not in page and "https://" not in page and "//cdn" not in page


def _as_localhost(app: Any) -> Any:
    """The app as the browser on this machine reaches it: schemathesis' client says Host: testserver."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k != b"host"]
            scope = {**scope, "headers": [*headers, (b"host", b"localhost")]}
        await app(scope, receive, send)

    return wrapped


@pytest.mark.slow
def test_fuzzed_requests_never_get_a_server_error(database_url: str, served: Path) -> None:
    """schemathesis generates requests from the OpenAPI schema, valid and invalid; none may get a 5xx.
    (Driven through hypothesis directly: schemathesis' pytest plugin does not run on pytest 9 yet.)"""
    schema = schemathesis.openapi.from_asgi("/openapi.json", _as_localhost(create_app(database_url)))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    statuses: list[int] = []
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call()
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, case.query, response.text)

        try:
            no_server_error()
        except Unsatisfiable:  # nothing to make invalid, as in an operation without parameters
            assert mode == GenerationMode.NEGATIVE
    assert len(statuses) >= 100 and {200, 404, 422} <= set(statuses)  # it did explore


@pytest.mark.slow
def test_imagedb_serve_listens_on_loopback(database_url: str, served: Path) -> None:
    import json
    import shutil
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    executable = shutil.which("imagedb", path=str(Path(sys.executable).parent)) or "imagedb"
    env = {**__import__("os").environ, "IMAGEDB_DATABASE_URL": database_url, "IMAGEDB_API_TOKEN": "t0ken"}
    server = subprocess.Popen([executable, "serve", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/collections", headers={"Authorization": "Bearer t0ken"}
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert json.load(response)[0]["images"] == 12
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "imagedb serve did not come up"
                time.sleep(0.2)
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"]
    finally:
        server.terminate()
        _, log = server.communicate(timeout=10)
    assert '"GET /api/collections" 200' in log  # one access line per request, on stderr
