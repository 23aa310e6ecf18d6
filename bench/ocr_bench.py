"""OCR precision, recall and cost per image on a generated set: words drawn with Pillow's bundled font (sizes,
colours, backgrounds, photos behind), read back through imagedb.ocr (the engine `imagedb ingest --ocr` runs).

Word-level: the drawn words and the read words, both cut as keyword search cuts them (lower case, letters and
digits); recall is drawn words read, precision is read words that were drawn. Chinese is not in the set: Pillow's
bundled font has no CJK glyphs and no CJK font is installed here (docs/keywords.md).

    python bench/ocr_bench.py [N]     # prints a table, writes bench/results/ocr.json
"""

from __future__ import annotations

import random
import re
import sys
import tempfile
import time
from pathlib import Path

import skimage.data
from common import SKIMAGE_PHOTOS, write_results
from PIL import Image, ImageDraw, ImageFont

from imagedb.keywords import captions
from imagedb.ocr import Engine

WORDS = (
    "invoice receipt total paid order lisbon porto tram beach sunset meeting agenda report budget station exit "
    "platform museum ticket coffee menu price open closed welcome street north south river bridge garden"
).split()
CASES = {  # name: (font size, text colour, background)
    "large black on white": (48, "black", "white"),
    "small black on white": (18, "black", "white"),
    "white on dark blue": (36, "white", (20, 40, 90)),
    "grey on light grey": (32, (110, 110, 110), (200, 200, 200)),
    "black on a photo": (40, "black", "photo"),
}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _image(rng: random.Random, size: int, colour: object, background: object) -> tuple[Image.Image, list[str]]:
    lines = [" ".join(rng.sample(WORDS, 3)) + f" {rng.randint(10, 9999)}" for _ in range(rng.randint(1, 3))]
    width, height = 640, 80 + size * 2 * len(lines)
    if background == "photo":
        photo = getattr(skimage.data, rng.choice(SKIMAGE_PHOTOS))()
        image = Image.fromarray(photo).convert("RGB").resize((width, height))
        image = Image.blend(image, Image.new("RGB", image.size, "white"), 0.6)  # a light photo, as on a poster
    else:
        image = Image.new("RGB", (width, height), background)  # type: ignore[arg-type]
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=size)
    for n, line in enumerate(lines):
        draw.text((20, 40 + n * size * 2), line, font=font, fill=colour)  # type: ignore[arg-type]
    return image, [w for line in lines for w in _words(line)]


def main(per_case: int) -> None:
    rng = random.Random(0)
    engine = Engine()
    rows = []
    caption_seconds: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        for case, (size, colour, background) in CASES.items():
            drawn = read = hit = 0
            seconds = []
            for n in range(per_case):
                image, words = _image(rng, size, colour, background)
                path = Path(folder) / f"{len(rows)}-{n}.png"
                image.save(path)
                started = time.perf_counter()
                captions(path)  # what every ingest does once its batches are stored: the header, no pixels
                caption_seconds.append(time.perf_counter() - started)
                started = time.perf_counter()
                text = engine.read(path)
                seconds.append(time.perf_counter() - started)
                found = _words(text)
                drawn, read = drawn + len(words), read + len(found)
                pool = list(words)
                for word in found:
                    if word in pool:
                        pool.remove(word)
                        hit += 1
            rows.append(
                {
                    "case": case,
                    "images": per_case,
                    "precision": round(hit / read, 3) if read else None,
                    "recall": round(hit / drawn, 3),
                    "seconds_per_image": round(sum(seconds) / len(seconds), 3),
                }
            )
    reading = round(1000 * sum(caption_seconds) / len(caption_seconds), 3)
    write_results("ocr.json", {"rows": rows, "caption_read_ms_per_image": reading, "per_case": per_case})
    print(f"{'case':<24} {'images':>6} {'precision':>9} {'recall':>6} {'s/image':>7}")
    for r in rows:
        print(f"{r['case']:<24} {r['images']:>6} {r['precision']!s:>9} {r['recall']:>6} {r['seconds_per_image']:>7}")
    print(f"reading captions (no OCR): {reading} ms per image")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
