"""The page in a real headless Chromium: type a query, see thumbnails, upload an image and see it first."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from imagedb.api import create_app
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.database import open_connection
from imagedb.store import Store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Chromium (apt-get install chromium)"),
]


@pytest.fixture
def page_url(database_url: str, photos: Path, tiny_model: str):  # type: ignore[no-untyped-def]
    store = Store(open_connection(database_url))
    ingest(store, [photos], model=ModelSpec.parse(tiny_model))
    store.close()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(database_url), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


def test_search_and_upload_in_the_browser(page_url: str, photos: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        # The page runs under its Content-Security-Policy: anything it does that the policy blocks is an error here.
        # (Waits use locators: Playwright's wait_for_function evaluates strings, which that policy rightly forbids.)
        blocked: list[str] = []
        page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(page_url)
        page.locator("#collection option").first.wait_for(state="attached")
        page.fill("#q", "a red rocket")
        page.press("#q", "Enter")
        thumbnails = page.locator('.card img[src^="blob:"]')
        expect(thumbnails).to_have_count(12)
        assert "12 results" in page.text_content("#status")

        page.set_input_files("#file", str(photos / "coffee.jpg"))
        expect(page.locator("#status")).to_contain_text("coffee.jpg")
        expect(thumbnails).to_have_count(12)
        assert page.locator(".card .name").first.text_content() == "coffee.jpg"

        page.locator(".card").first.click()
        page.wait_for_selector("#details[open]")
        assert "coffee.jpg" in page.text_content("#meta")
        page.click("#close")

        shot = Path(os.environ.get("IMAGEDB_SCREENSHOT", tmp_path / "results.png"))
        page.screenshot(path=str(shot))

        # Words too: ranked by vector and keywords, each card shows the words it matched (docs/keywords.md).
        page.check("#hybrid")
        page.fill("#q", "coffee")
        page.press("#q", "Enter")
        expect(page.locator(".card .matched").first).to_have_text("coffee")
        assert page.locator(".card .name").first.text_content() == "coffee.jpg"
        browser.close()
    assert blocked == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
