"""The page in a real headless Chromium: type a query, see thumbnails, upload an image and see it first."""

from __future__ import annotations

import itertools
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
        # The page opens on the newest images: the search's answer replaces them.
        expect(page.locator("#status")).to_contain_text("12 results")
        expect(thumbnails).to_have_count(12)

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


def _launch(playwright):  # type: ignore[no-untyped-def]
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
    )


def _offline(page, url: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Every request the page makes to another host is refused, and listed: the page must work without them."""
    elsewhere: list[str] = []
    own = url.rstrip("/")

    def route(r):  # type: ignore[no-untyped-def]
        if r.request.url.startswith(own + "/") or r.request.url.startswith(("blob:", "data:")):
            return r.continue_()
        elsewhere.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    return elsewhere


def test_browse_without_a_query_and_filter_by_a_facet(page_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = _launch(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        elsewhere = _offline(page, page_url)
        blocked: list[str] = []
        page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(page_url)
        # No query: the collection, newest first, with its counts.
        expect(page.locator('.card img[src^="blob:"]')).to_have_count(12)
        expect(page.locator("#status")).to_contain_text("12 images")
        collection_count = page.locator('#facets [data-facet="collection"] .count')
        expect(collection_count).to_have_text("12")
        expect(page.locator('#facets [data-facet="format"] .value')).to_have_count(2)
        # The photos hold no DICOM image: neither DICOM facets nor DICOM fields.
        assert page.locator('#facets [data-facet="modality"]').count() == 0
        expect(page.locator("#modality")).to_be_hidden()
        page.locator('#facets [data-facet="format"] .value[data-value="PNG"]').click()
        expect(collection_count).to_have_text("5")
        expect(page.locator("#status")).to_contain_text("5 images")
        expect(page.locator(".card")).to_have_count(5)
        expect(page.locator('#facets [data-facet="format"] .value.chosen')).to_have_text("PNG5")
        # A second click shows everything again.
        page.locator('#facets [data-facet="format"] .value.chosen').click()
        expect(collection_count).to_have_text("12")
        expect(page.locator(".card")).to_have_count(12)
        # A year fills After and Before with that year; a second click empties them.
        year = page.locator('#facets [data-facet="year"] .value').first
        value = int(year.get_attribute("data-value") or 0)
        year.click()
        expect(page.locator("#after")).to_have_value(f"{value:04d}-01-01")
        expect(page.locator("#before")).to_have_value(f"{value + 1:04d}-01-01")
        expect(page.locator('#facets [data-facet="year"] .value.chosen')).to_have_count(1)
        page.locator('#facets [data-facet="year"] .value.chosen').click()
        expect(page.locator("#after")).to_have_value("")
        expect(page.locator('#facets [data-facet="year"] .value.chosen')).to_have_count(0)

        # A search's labels keep apart, negative scores and long names included.
        page.fill("#q", "a red rocket")
        page.press("#q", "Enter")
        expect(page.locator("#status")).to_contain_text("12 results")
        captions = page.locator(".card .caption")
        for n in range(captions.count()):
            boxes = [s.bounding_box() for s in captions.nth(n).locator("span").all()]
            for left, right in itertools.pairwise(boxes):
                assert left is not None and right is not None
                assert left["x"] + left["width"] + 4 <= right["x"], captions.nth(n).inner_text()
        page.fill("#q", "")
        page.press("#q", "Enter")
        expect(page.locator("#status")).to_contain_text("12 images")
        browser.close()
    assert blocked == [] and elsewhere == []


def test_phone_sized_screen_shows_the_whole_header(page_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = _launch(playwright)
        page = browser.new_page(viewport={"width": 375, "height": 740}, device_scale_factor=2, is_mobile=True)
        page.goto(page_url)
        expect(page.locator('.card img[src^="blob:"]')).to_have_count(12)
        for control in ("#q", "#search button", ".upload"):
            box = page.locator(control).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, control
        assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing sideways
        shot = Path(os.environ.get("IMAGEDB_SCREENSHOT_PHONE", tmp_path / "phone.png"))
        page.screenshot(path=str(shot))
        browser.close()


@pytest.fixture
def token_url(database_url: str) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(database_url, token="s3cret-token")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


def test_api_docs_work_offline_and_send_the_token(token_url: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = _launch(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        elsewhere = _offline(page, token_url)
        blocked: list[str] = []
        page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
        asked: list[str] = []
        page.on("dialog", lambda d: (asked.append(d.message), d.accept("s3cret-token")))
        sent: dict[str, str | None] = {}
        page.on("request", lambda r: sent.update({r.url: r.headers.get("authorization")}))
        started = time.monotonic()
        page.goto(token_url + "docs")
        expect(page.locator(".opblock-summary-path", has_text="/api/browse")).to_be_visible()
        loaded_s = time.monotonic() - started
        # "Try it out" on the collections route: the token goes with it.
        page.locator(".opblock-summary-path", has_text="/api/collections").click()
        page.locator(".try-out__btn").click()
        page.locator(".execute").click()
        expect(page.locator(".live-responses-table tbody .response-col_status").first).to_have_text("200")
        browser.close()
    assert elsewhere == [] and blocked == [], (elsewhere, blocked)
    assert len(asked) == 1  # the token, asked once and kept
    assert sent[token_url + "openapi.json"] == "Bearer s3cret-token"
    assert sent[token_url + "api/collections"] == "Bearer s3cret-token"
    assert loaded_s < 10


def test_dicom_fields_show_only_for_a_collection_with_dicom(
    page_url: str, database_url: str, tiny_model: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright
    from pydicom.data.data_manager import DATA_ROOT

    tree = Path(DATA_ROOT, "test_files", "dicomdirtests")
    scans = tmp_path / "scans"  # beside the photos the page serves
    scans.mkdir()
    for source in [*(tree / "77654033/CT2").iterdir(), *(tree / "98892003/MR700").iterdir()]:
        shutil.copyfile(source, scans / f"{source.parent.name}_{source.name}")
    store = Store(open_connection(database_url))
    ingest(store, [scans], collection="scans", model=ModelSpec.parse(tiny_model))
    store.close()
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(page_url)
        expect(page.locator("#status")).to_contain_text("12 images")
        expect(page.locator("#modality")).to_be_hidden()
        page.select_option("#collection", "scans")
        expect(page.locator("#status")).to_contain_text("11 images")
        expect(page.locator("#modality")).to_be_visible()
        page.locator('#facets [data-facet="modality"] .value[data-value="CT"]').click()
        expect(page.locator("#status")).to_contain_text("4 images")
        expect(page.locator("#modality")).to_have_value("CT")
        page.select_option("#collection", "default")  # the photos: the DICOM fields go again (once emptied)
        page.fill("#modality", "")
        page.dispatch_event("#modality", "change")
        expect(page.locator("#status")).to_contain_text("12 images")
        expect(page.locator("#modality")).to_be_hidden()
        browser.close()
