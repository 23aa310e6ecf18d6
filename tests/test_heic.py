"""HEIC (as phones write it, through pillow-heif) and AVIF (Pillow itself): stored upright, with EXIF dates."""

from __future__ import annotations

from datetime import datetime
from io import BytesIO
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import ExifTags, Image, features

from imagedb.cli import main
from imagedb.embed import ModelSpec
from imagedb.files import SUPPORTED_SUFFIXES
from imagedb.images import decode
from imagedb.ingest import ingest
from imagedb.query import parse
from imagedb.request import SearchRequest
from imagedb.search import search
from imagedb.store import Filters, Store

pillow_heif = pytest.importorskip("pillow_heif")


def _landscape() -> Image.Image:
    """400 x 200, blue on the left quarter: after orientation 6 (a quarter turn clockwise) blue is on top."""
    image = Image.new("RGB", (400, 200), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, 100, 200))
    return image


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "Phone Co"
    exif[ExifTags.Base.Model] = "Pocket 15"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2024:05:06 07:08:09"
    exif[ExifTags.Base.Artist] = "Jane Doe"  # identifying: kept out as for JPEG
    return exif.tobytes()


def _write_heic(path: Path, orientation: int) -> None:
    heif = pillow_heif.from_pillow(_landscape())
    heif.save(path, quality=90, exif=_exif(orientation))


def _is_upright_portrait(jpeg: bytes) -> bool:
    thumb = Image.open(BytesIO(jpeg)).convert("RGB")
    width, height = thumb.size
    top, bottom = thumb.getpixel((width // 2, 5)), thumb.getpixel((width // 2, height - 5))
    return height > width and top[2] > 150 > top[0] and bottom[0] > 150 > bottom[2]


def test_heic_from_a_phone_is_stored_upright_with_its_date(store: Store, tmp_path: Path, tiny_model: str) -> None:
    folder = tmp_path / "phone"
    folder.mkdir()
    _write_heic(folder / "IMG_0001.HEIC", orientation=6)
    _write_heic(folder / "IMG_0002.heif", orientation=1)
    summary = ingest(store, [folder], model=ModelSpec.parse(tiny_model))
    assert (summary.added + summary.reused, summary.failed) == (2, 0), summary.errors
    rows = store.conn.execute(
        "SELECT i.path, i.format, i.taken_at, i.camera_make, i.orientation, i.width, i.height, i.exif, t.jpeg"
        " FROM images i JOIN thumbnails t ON t.image_id = i.id ORDER BY i.path"
    ).fetchall()
    turned, plain = rows
    assert turned[1] == "HEIF" and turned[2] == datetime(2024, 5, 6, 7, 8, 9) and turned[3] == "Phone Co"
    assert turned[4] == 6 and (turned[5], turned[6]) == (400, 200)  # as stored, like JPEG: orientation turns it
    assert _is_upright_portrait(turned[8])
    assert "Artist" not in turned[7]
    assert plain[4] in (1, None) and (plain[5], plain[6]) == (400, 200)
    assert Image.open(BytesIO(plain[8])).size[0] > Image.open(BytesIO(plain[8])).size[1]
    # Searched by the name phones give the files: HEIC is HEIF.
    for fmt in ("heic", "HEIF"):
        found = search(store, SearchRequest(parse(["x"]), filters=Filters(format=fmt)))
        assert sorted(Path(r.path).name for r in found) == ["IMG_0001.HEIC", "IMG_0002.heif"]


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow was built without AVIF")
def test_avif_is_read_by_pillow_and_turned_upright(tmp_path: Path) -> None:
    _landscape().save(tmp_path / "photo.avif", exif=_exif(6))
    decoded = decode(tmp_path / "photo.avif")
    assert decoded.record.format == "AVIF" and decoded.record.taken_at == datetime(2024, 5, 6, 7, 8, 9)
    assert decoded.record.orientation == 6 and (decoded.record.width, decoded.record.height) == (400, 200)
    assert decoded.record.thumbnail is not None and _is_upright_portrait(decoded.record.thumbnail)


def test_the_suffixes_and_help_name_the_new_formats() -> None:
    assert {".heic", ".heif", ".avif"} <= SUPPORTED_SUFFIXES
    help_text = CliRunner().invoke(main, ["ingest", "--help"]).output
    assert "HEIC" in help_text and "AVIF" in help_text
