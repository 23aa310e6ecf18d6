"""OCR for keyword search (docs/keywords.md): text drawn with Pillow's bundled font is read at ingest (--ocr) or
later (`imagedb keywords refresh --ocr`) and found by its words; an image the engine fails on is recorded, and the
run goes on. RapidOCR (the ocr extra, in the test extra) reads here; each image costs seconds on a shared CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont

from imagedb import ocr
from imagedb.cli import main
from imagedb.collection import get_collection
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.keywords import WordsSummary, read_text
from imagedb.query import parse_string
from imagedb.request import SearchRequest
from imagedb.search import search
from imagedb.store import Store

pytestmark = pytest.mark.skipif(not ocr.available(), reason="the ocr extra is not installed")


def drawn(path: Path, text: str, size: int = 40) -> Path:
    """An image with `text` in black on white, in Pillow's bundled font (it has no CJK glyphs: docs/keywords.md)."""
    image = Image.new("RGB", (40 + size * len(text) * 2 // 3, size * 3), "white")
    ImageDraw.Draw(image).text((20, size), text, font=ImageFont.load_default(size=size), fill="black")
    image.save(path)
    return path


class Crashing(ocr.Engine):
    """The engine, failing on one file as a real one can (a model error, a decoder bug)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def read(self, path: str | Path) -> str:
        if Path(path).name == self.name:
            raise RuntimeError("onnxruntime: simulated failure\nwith a second line")
        return super().read(path)


@pytest.mark.slow
def test_ocr_text_is_found_and_a_failing_image_is_recorded(
    store: Store, database_url: str, tmp_path: Path, tiny_model: str
) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    drawn(folder / "a.png", "INVOICE 4711")
    drawn(folder / "b.png", "Lisbon tram")
    for n in range(4):
        Image.new("RGB", (64, 64), (40 * n, 90, 200)).save(folder / f"plain{n}.png")
    summary = ingest(store, [folder], model=ModelSpec.parse(tiny_model))
    assert summary.words is not None and summary.words.ocr_read == 0  # OCR only when asked
    words = WordsSummary()
    read_text(store, get_collection(store, "default"), words, engine=Crashing("b.png"))
    assert words.ocr_read == 6 and len(words.ocr_failed) == 1
    path, reason = words.ocr_failed[0]
    assert path.endswith("b.png") and "simulated failure" in reason and "\n" not in reason
    found = search(store, SearchRequest(parse_string("kw:invoice")))
    assert [Path(r.path).name for r in found] == ["a.png"] and found[0].matched == ("invoice",)
    # the failed image is tried again when asked, by the CLI
    assert search(store, SearchRequest(parse_string("kw:tram"))) == []
    result = CliRunner().invoke(
        main, ["keywords", "refresh", "--ocr", "--retry-failed"], env={"IMAGEDB_DATABASE_URL": database_url}
    )
    assert result.exit_code == 0, result.output
    assert "ocr: 1 image(s) read, 1 with text, 0 failed" in result.output
    assert [Path(r.path).name for r in search(store, SearchRequest(parse_string("kw:tram")))] == ["b.png"]


def test_ocr_off_says_how_to_turn_it_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ocr, "available", lambda: False)
    drawn(tmp_path / "a.png", "x")
    result = CliRunner().invoke(main, ["ingest", "--ocr", str(tmp_path)])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].endswith(ocr.HOW_TO_ENABLE)
    result = CliRunner().invoke(main, ["keywords", "refresh", "--ocr"])
    assert result.exit_code == 2 and ocr.HOW_TO_ENABLE in result.output


@pytest.mark.slow
def test_ingest_ocr_reads_after_embedding(database_url: str, store: Store, tmp_path: Path, tiny_model: str) -> None:
    drawn(tmp_path / "receipt.png", "RECEIPT 2024")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)  # a file that fails decoding
    result = CliRunner().invoke(
        main,
        ["ingest", "--ocr", "--allow-random-weights", "--model", tiny_model, str(tmp_path)],
        env={"IMAGEDB_DATABASE_URL": database_url},
    )
    assert result.exit_code == 0, result.output
    assert "ocr: 1 image(s) read, 1 with text, 0 failed" in result.output
    assert "added 1" in result.output and "failed 1" in result.output  # the broken file is ingest's to report
    found = search(store, SearchRequest(parse_string("kw:receipt")))
    assert [Path(r.path).name for r in found] == ["receipt.png"] and found[0].matched == ("receipt",)


# A CJK font from the system (.ci/run installs Debian's fonts-wqy-microhei); Pillow's bundled font has no CJK glyphs.
CJK_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)


def drawn_cjk(path: Path, text: str, size: int = 48) -> Path:
    font = next((f for f in CJK_FONTS if Path(f).exists()), None)
    if font is None:
        pytest.skip("no CJK font installed (Debian: apt-get install fonts-wqy-microhei)")
    image = Image.new("RGB", (40 + size * len(text), size * 3), "white")
    ImageDraw.Draw(image).text((20, size), text, font=ImageFont.truetype(font, size), fill="black")
    image.save(path)
    return path


@pytest.mark.slow
def test_chinese_text_in_an_image_is_read_and_found_by_its_words(store: Store, tmp_path: Path, tiny_model: str) -> None:
    drawn_cjk(tmp_path / "fapiao.png", "增值税发票 4711")  # VAT invoice
    drawn_cjk(tmp_path / "tram.png", "里斯本有轨电车")  # Lisbon tram
    drawn(tmp_path / "english.png", "INVOICE 4711")
    for n in range(3):
        Image.new("RGB", (64, 64), (40 * n, 90, 200)).save(tmp_path / f"plain{n}.png")
    ingest(store, [tmp_path], model=ModelSpec.parse(tiny_model))
    words = WordsSummary()
    read_text(store, get_collection(store, "default"), words)
    assert words.ocr_read == 6 and not words.ocr_failed
    for query, expected in (("kw:发票", "fapiao.png"), ("kw:电车", "tram.png"), ('kw:"有轨电车"', "tram.png")):
        found = search(store, SearchRequest(parse_string(query)))
        assert [Path(r.path).name for r in found][:1] == [expected], (query, [r.path for r in found])
    found = search(store, SearchRequest(parse_string("kw:4711")))
    assert sorted(Path(r.path).name for r in found) == ["english.png", "fapiao.png"]
