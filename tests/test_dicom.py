"""DICOM: every test file inside the pydicom wheel is stored or recorded with its reason, no identifying header value
reaches the database, UIDs are keyed hashes only the owner's secret makes, and slices of one series find each other."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import numpy as np
import psycopg
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_charset_files, get_palette_files, get_testdata_files
from pydicom.data.data_manager import DATA_ROOT
from pydicom.uid import UID

from imagedb.cli import main
from imagedb.dicom import DicomOptions, has_preamble
from imagedb.embed import ModelSpec
from imagedb.files import find_images
from imagedb.images import decode
from imagedb.ingest import ingest
from imagedb.pg.backup import dump
from imagedb.pg.cluster import program
from imagedb.pg.database import open_connection
from imagedb.request import SearchRequest, Term
from imagedb.roles import grant_reader, grant_writer
from imagedb.search import search
from imagedb.store import Filters, Store

# Header fields whose values identify a patient, a clinician, an institution, a device or a study (PS3.15 Annex E);
# dates are identifying too (only the year is kept). Every PN, every non-registered UI and every private value is
# added to these whatever its keyword.
IDENTIFYING = {
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "MilitaryRank",
    "EthnicGroup",
    "PatientComments",
    "AdditionalPatientHistory",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "PerformingPhysicianName",
    "OperatorsName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "AccessionNumber",
    "StudyID",
    "DeviceSerialNumber",
    "StationName",
    "StudyDescription",
    "SeriesDescription",
    "ImageComments",
    "ProtocolName",
    "RequestedProcedureDescription",
    "PerformedProcedureStepDescription",
    "DerivationDescription",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "AcquisitionDateTime",
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "PatientAge",
    "PatientWeight",
    "PatientSize",
    "IssuerOfPatientID",
    "RequestAttributesSequence",
}
MIN_LENGTH = 5  # shorter values ("M", "2", "CT1") occur everywhere by chance: no evidence either way
DATE_VRS = {"DA", "DT"}


def _login(url: str, role: str, password: str) -> str:
    """`url`'s database as `role` with `password`, without the owner's password file (as in test_roles)."""
    parts = urlsplit(url)
    query = "&".join(f"{k}={v[0]}" for k, v in parse_qs(parts.query).items() if k != "passfile")
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.netloc.split('@')[-1]}", query=query))


def wheel_dicom_files() -> list[Path]:
    """Every DICOM file pydicom's own wheel holds (no download: only files under its data folder that exist)."""
    listed = {*get_testdata_files(), *get_charset_files(), *get_palette_files()}
    inside = [Path(p) for p in listed if p.startswith(DATA_ROOT) and os.path.isfile(p)]
    return sorted(p for p in inside if p.suffix.lower() == ".dcm" or has_preamble(p))


@pytest.fixture(scope="session")
def dicom_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """The wheel's DICOM files under neutral names (the wheel's own folders are named after patient ids), the
    extensionless ones without a suffix, so they are found by their DICM magic; name -> original."""
    folder = tmp_path_factory.mktemp("dicom-source")
    names = {}
    for n, source in enumerate(wheel_dicom_files()):
        name = f"f{n:03d}{source.suffix.lower()}"
        shutil.copyfile(source, folder / name)
        names[name] = source
    return folder, names


def _kinds(names: dict[str, Path], *wanted: str) -> dict[str, str]:
    by_original = {source.name: name for name, source in names.items()}
    return {w: by_original[w] for w in wanted}


@pytest.mark.slow
def test_every_dicom_file_in_the_pydicom_wheel_is_stored_or_recorded(
    store: Store, tiny_model: str, dicom_source: tuple[Path, dict[str, Path]]
) -> None:
    folder, names = dicom_source
    assert len(names) > 150  # test_files, charset and palette files, the DICOMDIR trees
    summary = ingest(store, [folder], collection="wheel", model=ModelSpec.parse(tiny_model))
    assert summary.added + summary.reused + summary.failed == len(names)
    stored = {Path(p).name: f for p, f in store.conn.execute("SELECT path, format FROM images").fetchall()}
    errors = dict(store.conn.execute("SELECT regexp_replace(path, '^.*/', ''), reason FROM ingest_errors").fetchall())
    assert set(stored) | set(errors) == set(names) and not set(stored) & set(errors)
    assert all(reason.strip() and "unexpected error" not in reason for reason in errors.values()), errors
    kinds = _kinds(
        names,
        "CT_small.dcm",  # CT, explicit little endian
        "MR_small.dcm",
        "MR_small_bigendian.dcm",  # big endian
        "ExplVR_BigEnd.dcm",
        "SC_rgb_rle.dcm",  # RLE
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
        "JPEG2000.dcm",  # JPEG 2000
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS
        "examples_palette.dcm",  # palette colour
        "SC_ybr_full_422_uncompressed.dcm",  # YBR
        "examples_ybr_color.dcm",  # multi-frame (30 frames), YBR JPEG
        "rtdose.dcm",  # multi-frame, 15 frames
        "17136",  # extensionless with the DICM magic, from a DICOMDIR tree
    )
    assert {k: stored.get(name) for k, name in kinds.items()} == dict.fromkeys(kinds, "DICOM")
    failed = _kinds(names, "MR_truncated.dcm", "rtplan.dcm", "DICOMDIR")
    assert "less than expected" in errors[failed["MR_truncated.dcm"]]
    assert "without pixel data" in errors[failed["rtplan.dcm"]]
    assert "without pixel data" in errors[failed["DICOMDIR"]]
    # The middle frame of a multi-frame file, and every stored DICOM image has its row of kept fields.
    frames = store.conn.execute(
        "SELECT d.frame, d.frames FROM dicom_images d JOIN images i ON i.id = d.image_id WHERE i.path LIKE %s",
        (f"%/{kinds['examples_ybr_color.dcm']}",),
    ).fetchone()
    assert frames == (16, 30)
    assert store.conn.execute(
        "SELECT count(*) FROM images i WHERE NOT EXISTS (SELECT 1 FROM dicom_images d WHERE d.image_id = i.id)"
    ).fetchone() == (0,)
    assert store.admin.problems() == []


def _identifying_values(ds: pydicom.Dataset) -> set[str]:
    found: set[str] = set()
    for element in [*ds.file_meta, *ds] if hasattr(ds, "file_meta") else list(ds):
        if element.VR == "SQ":
            for item in element.value or []:
                found |= _identifying_values(item)
            continue
        registered_uid = element.VR == "UI" and all(UID(str(v)).name != str(v) for v in _values(element.value))
        if element.VR == "TM":
            continue  # a time of day alone ("000017") names nobody, and such digits occur inside any number
        if (
            element.tag.is_private
            or element.VR == "PN"
            or element.keyword in IDENTIFYING
            or (element.VR == "UI" and not registered_uid)
        ):
            for value in _values(element.value):
                text = value.decode("latin-1", "replace") if isinstance(value, bytes) else str(value)
                text = text.replace("\x00", "").strip()
                candidates = {text, *text.replace("=", "^").split("^")} if element.VR == "PN" else {text}
                if element.VR in DATE_VRS and len(text) >= 8 and text[:8].isdigit() and text[4:8] != "0101":
                    # As PostgreSQL prints a date; 1 January is what every DICOM row's taken_at holds (the year).
                    candidates.add(f"{text[:4]}-{text[4:6]}-{text[6:8]}")
                found |= {c.strip() for c in candidates if len(c.strip()) >= MIN_LENGTH}
    return found


def _values(value: object) -> list[object]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def _everything_stored(database_url: str, store: Store, tmp_path: Path) -> str:
    """A pg_dump of the database as SQL text, and the rows of every view as text."""
    dumped = tmp_path / "all.dump"
    dump(database_url, dumped)
    pg_restore = program("pg_restore")
    text = subprocess.run([pg_restore, "--file=-", str(dumped)], capture_output=True, check=True).stdout.decode()
    views = [r[0] for r in store.conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'")]
    assert "dicom_catalog" in views
    for view in views:
        text += "\n".join(str(r[0]) for r in store.conn.execute(f'SELECT v::text FROM "{view}" v').fetchall())
    text += "\n".join(str(r[0]) for r in store.conn.execute("SELECT header::text FROM dicom_images").fetchall())
    return text


def _appears(value: str, stored: str) -> bool:
    """Whether `value` is in the stored text. A value of hex digits alone (an id like 12345, a date) counts only
    where it stands on its own: inside the random hex of a keyed UID hash or a SHA-256 it is chance, not a leak
    (such matches made this test fail now and then)."""
    if re.fullmatch(r"[0-9A-Fa-f]+", value):
        return re.search(rf"(?<![0-9A-Fa-f]){re.escape(value)}(?![0-9A-Fa-f])", stored) is not None
    return value in stored


@pytest.mark.slow
def test_no_identifying_value_of_any_header_reaches_the_database(
    store: Store, database_url: str, tiny_model: str, dicom_source: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    folder, names = dicom_source
    # What the database holds before any image (imagedb's own SQL: a limit such as 20000 in a function body) is
    # not a header value reaching it.
    (tmp_path / "before").mkdir()
    shipped = _everything_stored(database_url, store, tmp_path / "before")
    ingest(store, [folder], collection="wheel", model=ModelSpec.parse(tiny_model))
    stored = _everything_stored(database_url, store, tmp_path)
    assert "CT_small" not in stored and "MR_small" not in stored  # the neutral names: the check can see paths
    # A value that is also a kept field's (an institution named like a manufacturer, a private tag repeating the
    # model name, the body part in the image type) is stored for that field: not evidence either way.
    kept = "\n".join(
        str(r[0]) for r in store.conn.execute("SELECT concat_ws(' ', modality, body_part, header) FROM dicom_images")
    )
    leaks = {}
    checked = 0
    for source in names.values():
        values = {
            v
            for v in _identifying_values(pydicom.dcmread(source, force=True))
            if v not in kept and v.strip("01")  # runs of 0 and 1 are in any number, and dhash bits are nothing else
        }
        checked += len(values)
        found = sorted(v for v in values if _appears(v, stored) and not _appears(v, shipped))
        if found:
            leaks[source.name] = found
    assert checked > 1000
    assert not leaks, leaks
    # Sanity: the check would see a value that is stored (the kept manufacturer of CT_small).
    assert "GE MEDICAL SYSTEMS" in stored and "RHAPSODE" in stored


def test_known_values_of_ct_small_are_gone_and_the_kept_fields_are_there(
    store: Store, tiny_model: str, tmp_path: Path
) -> None:
    shutil.copyfile(Path(DATA_ROOT, "test_files", "CT_small.dcm"), tmp_path / "a.dcm")
    ingest(store, [tmp_path], collection="ct", model=ModelSpec.parse(tiny_model))
    row = store.conn.execute(
        "SELECT d.modality, d.study_year, d.study_date, d.header, i.taken_at, d.study_uid_hash, d.series_uid_hash,"
        " i.camera_make, i.camera_model FROM dicom_images d JOIN images i ON i.id = d.image_id"
    ).fetchone()
    modality, year, day, header, taken, study, series, make, model = row
    assert (modality, year, day, make, model) == ("CT", 2004, None, "GE MEDICAL SYSTEMS", "RHAPSODE")
    assert taken.isoformat() == "2004-01-01T00:00:00"  # the year only
    assert header["Rows"] == 128 and header["PixelSpacing"] == [0.661468, 0.661468] and header["SliceThickness"] == 5
    assert not {"PatientName", "PatientID", "InstitutionName", "StudyDate", "StudyInstanceUID"} & set(header)
    ds = pydicom.dcmread(Path(DATA_ROOT, "test_files", "CT_small.dcm"))
    # The keyed hash is HMAC-SHA256 of the UID with the secret only the owner reads.
    inner, outer = store.conn.execute("SELECT inner_pad, outer_pad FROM dicom_secret").fetchone()
    key = bytes(b ^ 0x36 for b in inner).rstrip(b"\x00")
    assert bytes(b ^ 0x5C for b in outer).rstrip(b"\x00") == key and len(inner) == 64
    assert study == hmac.new(key, ds.StudyInstanceUID.encode(), hashlib.sha256).hexdigest()[:32]
    assert series == hmac.new(key, ds.SeriesInstanceUID.encode(), hashlib.sha256).hexdigest()[:32]
    assert study != hashlib.sha256(ds.StudyInstanceUID.encode()).hexdigest()[:32]


def test_keep_dates_keeps_the_study_date(store: Store, tiny_model: str, tmp_path: Path) -> None:
    shutil.copyfile(Path(DATA_ROOT, "test_files", "CT_small.dcm"), tmp_path / "a.dcm")
    ingest(store, [tmp_path], collection="ct", model=ModelSpec.parse(tiny_model), dicom=DicomOptions(keep_dates=True))
    day, taken = store.conn.execute(
        "SELECT d.study_date, i.taken_at FROM dicom_images d JOIN images i ON i.id = d.image_id"
    ).fetchone()
    assert day.isoformat() == "2004-01-19" and taken.isoformat() == "2004-01-19T07:27:30"


def test_keep_phi_only_for_a_collection_created_with_it(
    database_url: str, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    shutil.copyfile(Path(DATA_ROOT, "test_files", "CT_small.dcm"), tmp_path / "a.dcm")
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", str(tmp_path), "--collection", "plain", "--model", tiny_model]).exit_code == 0
    refused = runner.invoke(main, ["ingest", str(tmp_path), "--collection", "plain", "--keep-phi"])
    assert refused.exit_code == 2 and "created without --keep-phi" in refused.output
    assert "Traceback" not in refused.output
    assert [line for line in refused.output.splitlines() if line.startswith("Error:")] == [
        line for line in refused.output.splitlines() if "keep-phi" in line
    ]
    kept = runner.invoke(main, ["ingest", str(tmp_path), "--collection", "phi", "--model", tiny_model, "--keep-phi"])
    assert kept.exit_code == 0, kept.output
    with psycopg.connect(database_url) as conn:
        rows = dict(
            conn.execute(
                "SELECT c.name, d.header FROM dicom_images d JOIN images i ON i.id = d.image_id"
                " JOIN collections c ON c.id = i.collection_id"
            ).fetchall()
        )
    assert rows["phi"]["PatientName"] == "CompressedSamples^CT1" and "PatientName" not in rows["plain"]
    assert "PixelData" not in rows["phi"]


def _series(source: Path, folder: Path, prefix: str, count: int, seed: int) -> None:
    """`count` slices of one series made from one file: its pixels plus a little noise, new instance UIDs."""
    rng = np.random.default_rng(seed)
    for n in range(count):
        ds = pydicom.dcmread(source)
        pixels = ds.pixel_array.astype(np.int32) + rng.integers(-8, 9, ds.pixel_array.shape)
        ds.PixelData = np.clip(pixels, 0, None).astype(ds.pixel_array.dtype).tobytes()
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = n + 1
        ds.save_as(folder / f"{prefix}{n}.dcm")


def test_slices_of_one_series_find_each_other_first(store: Store, tiny_model: str, tmp_path: Path) -> None:
    # What the tiny random model can show: slices that are windowed alike and differ a little (here: noise) are
    # nearest to each other, before other series and modalities. Real series, whose slices differ by anatomy,
    # need a trained model (docs/dicom.md, Models): the wheel's 16 x 16 DICOMDIR slices do not even group in
    # pixel space, so they serve as distractors only.
    _series(Path(DATA_ROOT, "test_files", "CT_small.dcm"), tmp_path, "ct", 4, seed=1)
    _series(Path(DATA_ROOT, "test_files", "MR_small.dcm"), tmp_path, "mr", 4, seed=2)
    tree = Path(DATA_ROOT, "test_files", "dicomdirtests")
    for series in ("98892001/CT5N", "77654033/CT2", "98892003/MR700"):
        for source in (tree / series).iterdir():
            shutil.copyfile(source, tmp_path / f"{series.replace('/', '_')}_{source.name}")
    ingest(store, [tmp_path], collection="series", model=ModelSpec.parse(tiny_model))
    rows = store.conn.execute("SELECT image_id, series, series_images FROM dicom_catalog").fetchall()
    series_of = {image_id: series for image_id, series, _ in rows}
    paths = dict(store.conn.execute("SELECT id, path FROM images").fetchall())
    ct = [i for i, p in paths.items() if Path(p).name.startswith("ct")]
    assert len({series_of[i] for i in ct}) == 1 and {n for i, _, n in rows if i in ct} == {4}
    for image_id in ct:
        # "More like this" leaves the image itself out, everywhere: its three siblings come first.
        results = search(store, SearchRequest([Term("id", str(image_id), 1.0)], collection="series", limit=3))
        assert sorted(r.image_id for r in results) == sorted(set(ct) - {image_id}), (image_id, results)
        # The SQL surface gives the same, the image itself left out.
        similar = store.conn.execute("SELECT image_id FROM imagedb_similar(%s, 3)", (image_id,)).fetchall()
        assert sorted(r[0] for r in similar) == sorted(set(ct) - {image_id})
    # A query by the file itself is windowed exactly as the stored copy: that copy first, score 1.
    query = Term("image", str(tmp_path / "ct2.dcm"), 1.0)
    best = search(store, SearchRequest([query], collection="series", limit=1))[0]
    assert paths[best.image_id] == str(tmp_path / "ct2.dcm") and best.score > 0.999


@pytest.mark.slow
def test_modality_and_body_part_filters(
    store: Store, database_url: str, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = Path(DATA_ROOT, "test_files", "dicomdirtests")
    for source in [*(tree / "77654033/CT2").iterdir(), *(tree / "98892003/MR700").iterdir()]:
        shutil.copyfile(source, tmp_path / f"{source.parent.name}_{source.name}")
    ingest(store, [tmp_path], collection="f", model=ModelSpec.parse(tiny_model))
    query = [Term("text", "a scan", 1.0)]
    assert len(search(store, SearchRequest(query, collection="f", limit=50, filters=Filters(modality="ct")))) == 4
    assert len(search(store, SearchRequest(query, collection="f", limit=50, filters=Filters(modality="MR")))) == 7
    assert len(search(store, SearchRequest(query, collection="f", limit=50, filters=Filters(body_part="head")))) == 4
    assert (
        search(store, SearchRequest(query, collection="f", limit=50, filters=Filters(modality="MR", body_part="HEAD")))
        == []
    )
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    out = CliRunner().invoke(
        main, ["search", "a scan", "-c", "f", "--modality", "CT", "--body-part", "Head", "--paths"]
    )
    assert out.exit_code == 0 and len(out.output.split()) == 4 and all("CT2_" in p for p in out.output.split())
    nul = CliRunner().invoke(main, ["search", "a scan", "-c", "f", "--modality", "C\x00T"])
    assert nul.exit_code == 2 and "NUL" in nul.output


def test_a_reader_sees_dicom_catalog_and_nobody_else_the_secret(
    store: Store, database_url: str, tiny_model: str, tmp_path: Path
) -> None:
    shutil.copyfile(Path(DATA_ROOT, "test_files", "CT_small.dcm"), tmp_path / "a.dcm")
    ingest(store, [tmp_path], collection="ct", model=ModelSpec.parse(tiny_model))
    reader, writer = f"dcm_reader_{os.getpid()}", f"dcm_writer_{os.getpid()}"
    grant_reader(store, reader, "reader-pass-393")
    grant_writer(store, writer, "writer-pass-394")
    with psycopg.connect(_login(database_url, reader, "reader-pass-393"), autocommit=True) as conn:
        assert conn.execute("SELECT modality, series_images FROM dicom_catalog").fetchall() == [("CT", 1)]
        # The tables are in imagedb_internal, which a reader may not use (migration 0014).
        secret, images = "SELECT * FROM imagedb_internal.dicom_secret", "SELECT * FROM imagedb_internal.dicom_images"
        for statement in (secret, images, "SELECT imagedb_uid_hash('1')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    # A writer ingests DICOM (its UIDs hashed through the owner's function) but cannot read the key.
    shutil.copyfile(Path(DATA_ROOT, "test_files", "MR_small.dcm"), tmp_path / "b.dcm")
    with open_connection(_login(database_url, writer, "writer-pass-394")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM dicom_secret")
        summary = ingest(Store(conn), [tmp_path], collection="ct")
        assert summary.added == 1 and summary.failed == 0
    assert store.conn.execute("SELECT count(*) FROM dicom_images WHERE study_uid_hash IS NOT NULL").fetchone() == (2,)


def test_all_frames_stores_each_frame_and_a_changed_file_leaves_none_behind(
    store: Store, tiny_model: str, tmp_path: Path
) -> None:
    target = tmp_path / "dose.dcm"
    shutil.copyfile(Path(DATA_ROOT, "test_files", "rtdose.dcm"), target)  # 15 frames
    spec = ModelSpec.parse(tiny_model)
    summary = ingest(store, [tmp_path], collection="mf", model=spec, dicom=DicomOptions(all_frames=True))
    assert summary.added == 15 and summary.failed == 0
    rows = store.conn.execute(
        "SELECT i.path, d.frame FROM images i JOIN dicom_images d ON d.image_id = i.id ORDER BY d.frame"
    ).fetchall()
    assert [f for _, f in rows] == list(range(1, 16))
    assert dict((f, p) for p, f in rows)[8] == str(target)  # the middle frame keeps the file's path
    assert dict((f, p) for p, f in rows)[1] == f"{target}#frame=1"
    # The file changes (now one frame): its 14 other frame rows go with the old version.
    shutil.copyfile(Path(DATA_ROOT, "test_files", "rtdose_1frame.dcm"), target)
    os.utime(target, ns=(1, 1))
    ingest(store, [tmp_path], collection="mf", dicom=DicomOptions(all_frames=True))
    assert store.conn.execute("SELECT path FROM images").fetchall() == [(str(target),)]


def test_windowing_is_deterministic_and_monochrome1_is_inverted(tmp_path: Path) -> None:
    source = Path(DATA_ROOT, "test_files", "CT_small.dcm")
    shutil.copyfile(source, tmp_path / "a.dcm")
    shutil.copyfile(source, tmp_path / "b")  # no suffix: found and read by its DICM magic
    a, b = decode(tmp_path / "a.dcm"), decode(tmp_path / "b")
    assert a.record.thumbnail == b.record.thumbnail and a.record.dhash == b.record.dhash
    ds = pydicom.dcmread(source)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "inverted.dcm")
    inverted = decode(tmp_path / "inverted.dcm")
    pa, pi = a.pixels.getpixel((10, 10)), inverted.pixels.getpixel((10, 10))
    assert all(x + y == 255 for x, y in zip(pa, pi, strict=True))


def test_find_images_opens_extensionless_files_without_blocking(tmp_path: Path) -> None:
    shutil.copyfile(Path(DATA_ROOT, "test_files", "MR_small.dcm"), tmp_path / "IM0001")
    (tmp_path / "README").write_text("not an image")
    (tmp_path / "short").write_bytes(b"DICM")
    os.mkfifo(tmp_path / "pipe")  # opening it for reading would wait for a writer forever
    os.symlink("/dev/zero", tmp_path / "zero")
    assert [p.name for p in find_images([tmp_path])] == ["IM0001"]


def test_api_filters_and_dicom_upload(store: Store, database_url: str, tiny_model: str, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from imagedb.api import create_app

    tree = Path(DATA_ROOT, "test_files", "dicomdirtests")
    for source in [*(tree / "77654033/CT2").iterdir(), *(tree / "98892003/MR700").iterdir()]:
        shutil.copyfile(source, tmp_path / f"{source.parent.name}_{source.name}")
    shutil.copyfile(Path(DATA_ROOT, "test_files", "CT_small.dcm"), tmp_path / "ct_small.dcm")
    ingest(store, [tmp_path], collection="f", model=ModelSpec.parse(tiny_model))
    client = TestClient(create_app(database_url), base_url="http://localhost")
    found = client.get("/api/search", params={"q": "scan", "collection": "f", "modality": "ct", "body_part": "head"})
    assert found.status_code == 200 and len(found.json()["results"]) == 4
    assert all("CT2_" in r["path"] for r in found.json()["results"])
    assert client.get("/api/search", params={"q": "scan", "collection": "f", "modality": "x" * 65}).status_code == 422
    upload = client.post(
        "/api/search/image",
        params={"collection": "f", "limit": 1},
        files={"file": ("scan.dcm", (tmp_path / "ct_small.dcm").read_bytes(), "application/dicom")},
    )
    assert upload.status_code == 200, upload.text
    assert upload.json()["results"][0]["path"] == str(tmp_path / "ct_small.dcm")
