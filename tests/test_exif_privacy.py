"""EXIF fields that identify a person or a device stay out of the database unless asked for."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from PIL import ExifTags, Image

from imagedb.cli import main
from imagedb.embed import ModelSpec
from imagedb.exif import IDENTIFYING_EXIF_TAGS
from imagedb.ingest import ingest
from imagedb.store import Store

_NAME_TO_TAG = {name: tag for tag, name in ExifTags.TAGS.items()}
# Written into IFD0 and the Exif IFD of one JPEG, each with a value that names someone or something.
IFD0 = {
    "Artist": "Jane Doe",
    "Copyright": "(c) Jane Doe",
    "HostComputer": "janes-laptop",
    "ImageDescription": "Jane at 12 Elm Street",
    "XPAuthor": "Jane Doe".encode("utf-16-le"),
    "XPComment": "birthday".encode("utf-16-le"),
    "XPKeywords": "family".encode("utf-16-le"),
    "XPSubject": "party".encode("utf-16-le"),
    "XPTitle": "at home".encode("utf-16-le"),
    "CameraSerialNumber": "CSN-0001",
}
EXIF_IFD = {
    "BodySerialNumber": "BODY-12345",
    "LensSerialNumber": "LENS-67890",
    "CameraOwnerName": "Jane Doe",
    "ImageUniqueID": "0123456789abcdef0123456789abcdef",
    "UserComment": b"ASCII\x00\x00\x00hello from Jane",
}
NUMERIC = {0xFDE8: "Jane Doe", 0xFDE9: "SN-424242"}  # OwnerName and SerialNumber, as some cameras write them
KEPT_ALWAYS = {"Make": "ACME", "Model": "Shooter 3000", "DateTimeOriginal": "2021:07:04 15:30:00"}


def _jpeg_with_identifying_exif(path: Path) -> None:
    exif = Image.Exif()
    exif[_NAME_TO_TAG["Make"]] = KEPT_ALWAYS["Make"]
    exif[_NAME_TO_TAG["Model"]] = KEPT_ALWAYS["Model"]
    for name, value in IFD0.items():
        exif[_NAME_TO_TAG[name]] = value
    for tag, value in NUMERIC.items():
        exif[tag] = value
    ifd = exif.get_ifd(ExifTags.IFD.Exif)
    ifd[_NAME_TO_TAG["DateTimeOriginal"]] = KEPT_ALWAYS["DateTimeOriginal"]
    for name, value in EXIF_IFD.items():
        ifd[_NAME_TO_TAG[name]] = value
    Image.new("RGB", (64, 48), (120, 80, 40)).save(path, exif=exif)


def _stored_exif(store: Store, collection: str) -> dict:
    return store.conn.execute(
        "SELECT i.exif FROM images i JOIN collections c ON c.id = i.collection_id WHERE c.name = %s", (collection,)
    ).fetchone()[0]


def test_identifying_fields_stay_out_by_default(store: Store, tmp_path: Path, tiny_model: str) -> None:
    _jpeg_with_identifying_exif(tmp_path / "photo.jpg")
    written = Image.open(tmp_path / "photo.jpg").getexif()
    assert written.get(_NAME_TO_TAG["Artist"]) == "Jane Doe"  # the file really carries them
    ingest(store, [tmp_path / "photo.jpg"], model=ModelSpec.parse(tiny_model))
    exif = _stored_exif(store, "default")
    for name, value in KEPT_ALWAYS.items():
        assert exif[name] == value
    for name in [*IFD0, *EXIF_IFD, "65000", "65001"]:
        assert name not in exif, name
    text = str(exif)
    for secret in ("Jane", "BODY-12345", "LENS-67890", "CSN-0001", "SN-424242", "janes-laptop", "Elm Street"):
        assert secret not in text, secret


def test_keep_identifying_keeps_them(store: Store, database_url: str, tmp_path: Path, tiny_model: str) -> None:
    _jpeg_with_identifying_exif(tmp_path / "photo.jpg")
    result = CliRunner().invoke(
        main,
        ["--database-url", database_url, "ingest", str(tmp_path), "-m", tiny_model, "-c", "kept", "--keep-identifying"],
    )
    assert result.exit_code == 0, result.output
    exif = _stored_exif(store, "kept")
    assert exif["Artist"] == "Jane Doe" and exif["BodySerialNumber"] == "BODY-12345"
    assert exif["LensSerialNumber"] == "LENS-67890" and exif["CameraOwnerName"] == "Jane Doe"
    assert exif["ImageUniqueID"] == "0123456789abcdef0123456789abcdef" and exif["65001"] == "SN-424242"
    assert exif["ImageDescription"] == "Jane at 12 Elm Street" and exif["CameraSerialNumber"] == "CSN-0001"
    assert "UserComment" not in exif and "MakerNote" not in exif  # binary blobs: never stored


def test_the_documented_list_is_the_code(tmp_path: Path) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "privacy.md").read_text()
    for name in IDENTIFYING_EXIF_TAGS:
        assert f"`{name}`" in doc, name
