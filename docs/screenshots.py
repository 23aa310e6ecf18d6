"""Makes docs/screenshot.png and docs/screenshot-phone.png: the page with no query, in Chromium, on a collection of
real photographs (the ones scikit-image ships that load offline), each given a camera and a date in its EXIF, so
that the facets have something to count. The embedding model is the tests' tiny random one: browsing needs none.

    python docs/screenshots.py          # needs Debian's chromium, Playwright and scikit-image (the test extras)
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagedb.api import create_app  # noqa: E402
from imagedb.embed import ModelSpec  # noqa: E402
from imagedb.ingest import ingest  # noqa: E402
from imagedb.pg.database import open_connection  # noqa: E402
from imagedb.pg.embedded import stop_embedded  # noqa: E402
from imagedb.store import Store  # noqa: E402
from tests.tiny_model import make_tiny_model  # noqa: E402

CAMERAS = [("Canon", "EOS R6"), ("FUJIFILM", "X-T4"), ("Apple", "iPhone 14"), ("NIKON", "Z 6II")]
PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "cat",
    "colorwheel", "logo", "skin", "coins", "camera", "moon", "page", "clock", "brick", "grass", "gravel", "text",
    "eagle", "motorcycle",
)  # fmt: skip


def photographs(folder: Path) -> int:
    """The photographs as JPEGs with EXIF make, model and DateTimeOriginal; returns how many loaded."""
    import skimage.data

    made = 0
    for n, name in enumerate(PHOTOS):
        try:
            pixels = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
        except Exception:  # one that would be downloaded: offline, left out
            continue
        image = Image.fromarray(np.asarray(pixels)).convert("RGB")
        exif = Image.Exif()
        make, model = CAMERAS[n % len(CAMERAS)]
        exif[0x010F], exif[0x0110] = make, model
        exif.get_ifd(0x8769)[0x9003] = f"{2019 + n % 6}:{1 + n % 12:02d}:{1 + n:02d} 10:{n:02d}:00"
        image.save(folder / f"{name}.jpg", quality=90, exif=exif)
        made += 1
    return made


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        try:
            shoot(home)
        finally:
            stop_embedded(home / "db")


def shoot(home: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    folder = home / "photos"
    folder.mkdir()
    print(f"{photographs(folder)} photographs")
    model = make_tiny_model(home / "model")
    store = Store(open_connection(None, home / "db"))
    ingest(store, [folder], model=ModelSpec.parse(model))
    store.close()
    app = create_app(None, home / "db")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=8765, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        for viewport, scale, name in (((1280, 860), 1, "screenshot.png"), ((390, 844), 2, "screenshot-phone.png")):
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]}, device_scale_factor=scale)
            page.goto("http://127.0.0.1:8765/")
            expect(page.locator("#status")).to_contain_text("images, newest first")
            cards = page.locator('.card img[src^="blob:"]')
            expect(cards.first).to_be_visible()
            time.sleep(1)  # the remaining thumbnails
            page.screenshot(path=str(ROOT / "docs" / name))
            print("wrote", ROOT / "docs" / name)
        browser.close()
    server.should_exit = True


if __name__ == "__main__":
    main()
