"""Keyword search (docs/keywords.md): the words of file names, folders, attributes, captions (EXIF, IPTC, XMP) and
OCR text, found from the library, the CLI, the API and SQL, alone and fused with the vector ranking."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.query import parse, parse_string
from imagedb.request import SearchRequest
from imagedb.search import search
from imagedb.store import Filters, Store


def _plain(path: Path, colour: tuple[int, int, int], **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 96), colour).save(path, **save)
    return path


def _xmp(subjects: list[str], description: str) -> bytes:
    items = "".join(f"<rdf:li>{s}</rdf:li>" for s in subjects)
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f"<dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>"
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{description}</rdf:li></rdf:Alt></dc:description>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()


@pytest.fixture
def worded(store: Store, tmp_path: Path, tiny_model: str) -> Path:
    folder = tmp_path / "library"
    for n in range(12):  # distractors with words of their own
        _plain(folder / "misc" / f"DSC_{1000 + n}_holiday.jpg", (20 * n, 100, 200 - 10 * n))
    _plain(folder / "scans" / "IMG_4711_invoice.jpg", (200, 30, 30))
    exif = Image.Exif()
    exif[0x010E] = "Sunset over the Tagus"  # ImageDescription
    exif[0x9C9E] = "Lisbon;tram".encode("utf-16-le")  # XPKeywords
    _plain(folder / "trip" / "P1000.jpg", (30, 200, 30), exif=exif)
    _plain(folder / "trip" / "P1001.jpg", (30, 30, 200), xmp=_xmp(["Porto", "azulejo"], "Blue tiles 增值税发票"))
    # XMP of binary junk and a 10,000-word caption: read what can be read, never fail the run
    _plain(folder / "trip" / "P1002.jpg", (90, 90, 90), xmp=bytes(range(256)) * 40)
    long = Image.Exif()
    long[0x010E] = " ".join(f"word{n}" for n in range(10_000)) + " needle"
    _plain(folder / "trip" / "P1003.png", (120, 90, 60), exif=long)  # JPEG holds 64 KB of EXIF
    summary = ingest(store, [folder], model=ModelSpec.parse(tiny_model))
    assert summary.failed == 0 and summary.words is not None and summary.words.captions == 17
    return folder


def _names(results) -> list[str]:  # type: ignore[no-untyped-def]
    return [Path(r.path).name for r in results]


def test_lexemes_split_names_and_cut_chinese_into_bigrams(store: Store) -> None:
    assert store.keywords.lexemes("IMG_4711_invoice.jpg") == ["img", "4711", "invoice", "jpg"]
    assert store.keywords.lexemes("增值税发票 Café") == ["增值", "值税", "税发", "发票", "café"]
    assert store.keywords.lexemes("it's \\ 'quoted' \x01") == ["it", "s", "quoted"]


def test_words_of_names_exif_and_xmp_rank_first(store: Store, worded: Path) -> None:
    for query, expected in [
        ("kw:invoice", "IMG_4711_invoice.jpg"),
        ("kw:4711", "IMG_4711_invoice.jpg"),
        ("kw:lisbon", "P1000.jpg"),
        ("kw:tagus", "P1000.jpg"),
        ("kw:azulejo", "P1001.jpg"),
        ('kw:"blue tiles"', "P1001.jpg"),
        ("kw:发票", "P1001.jpg"),
        ("kw:needle", "P1003.png"),
    ]:
        results = search(store, SearchRequest(parse_string(query), limit=5))
        assert _names(results)[:1] == [expected], query
        assert results[0].keyword_rank == 1 and results[0].matched, query
    # a phrase holds its words in order; -kw: excludes
    assert search(store, SearchRequest(parse_string('kw:"tiles blue"'))) == []
    assert "IMG_4711_invoice.jpg" not in _names(search(store, SearchRequest(parse_string("red -kw:invoice"), limit=20)))


def test_hybrid_fuses_vector_and_words(store: Store, worded: Path) -> None:
    results = search(store, SearchRequest(parse(["invoice"]), hybrid=True, limit=5))
    top = results[0]
    assert _names(results)[0] == "IMG_4711_invoice.jpg"
    assert top.keyword_rank == 1 and top.vector_rank is not None and top.matched == ("invoice",)
    assert -1 <= top.score <= 1
    assert len(results) == 5  # the vector ranking fills the page
    # a filter still gives k results
    kept = search(store, SearchRequest(parse(["invoice"]), hybrid=True, limit=3, filters=Filters(path="*/misc/*")))
    assert len(kept) == 3 and all("/misc/" in r.path for r in kept)


def test_attribute_change_updates_words(store: Store, worded: Path) -> None:
    from imagedb.attributes import tag

    tag(store, "default", str(worded / "misc" / "DSC_1003_holiday.jpg"), {"mood": "favourite"})
    results = search(store, SearchRequest(parse_string("kw:favourite")))
    assert _names(results) == ["DSC_1003_holiday.jpg"]
