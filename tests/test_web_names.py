"""The page shows file names it does not control safely, as the CLI does (issue #22, items 16 and 10): a
right-to-left override in `report_\\u202efdp.jpg` would display it as `report_gpj.pdf`; and a result without a
score (null) shows a dash instead of stopping the page."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
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
NAME = "report_\u202efdp.jpg"  # shows as "report_gpj.pdf" unescaped
SHOWN = "report_\\u202efdp.jpg"  # as imagedb/display.py escape() prints it


@pytest.fixture
def page_url(database_url: str, photos: Path, tiny_model: str, tmp_path: Path) -> Iterator[str]:
    folder = tmp_path / "named"
    folder.mkdir()
    shutil.copy(photos / "coffee.jpg", folder / NAME)
    shutil.copy(photos / "coffee.jpg", folder / "plain.jpg")
    store = Store(open_connection(database_url))
    ingest(store, [folder], model=ModelSpec.parse(tiny_model))
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


def test_names_are_escaped_and_a_missing_score_is_a_dash(page_url: str) -> None:
    from playwright.sync_api import Route, expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(page_url)
        page.locator("#collection option").first.wait_for(state="attached")
        page.fill("#q", "a cup")
        page.press("#q", "Enter")
        names = page.locator(".card .name")
        expect(names).to_have_count(2)
        assert sorted(names.all_text_contents()) == ["plain.jpg", SHOWN]
        assert all("\u202e" not in text for text in names.all_text_contents())

        card = page.locator(".card", has_text=SHOWN)
        card.click()
        page.wait_for_selector("#details[open]")
        meta = page.text_content("#meta") or ""
        assert SHOWN in meta and "\u202e" not in meta
        page.click("#close")

        # A null score or relevance, as an older server sent for a stored vector of zero length.
        def null_scores(route: Route) -> None:
            answer = route.fetch().json()
            for hit in answer["results"]:
                hit["score"], hit["relevance"] = None, None
            route.fulfill(status=200, content_type="application/json", body=json.dumps(answer))

        page.route("**/api/search?*", null_scores)
        page.fill("#q", "a mug")
        page.press("#q", "Enter")
        expect(page.locator("#status")).to_contain_text("2 results for “a mug”")
        assert page.locator(".card .score").all_text_contents() == ["—", "—"]
        assert not errors, errors
        browser.close()
