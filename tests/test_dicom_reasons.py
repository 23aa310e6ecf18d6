"""DICOM files whose header values are odd say so without quoting them: not in `ingest_errors.reason`, not on
stdout or stderr, not even with `imagedb --verbose` (pydicom logs invalid values to its own logger)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pydicom
import pytest
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataelem import DataElement

from imagedb.dicom import reason
from imagedb.files import BadImage
from imagedb.images import decode

SOURCE = Path(DATA_ROOT, "test_files", "CT_small.dcm")
MARK = "SECRET"
# Fields imagedb itself reads as numbers or codes: each gets a unique text under the VR the file declares for it
# (explicit VR: the file says what the value is), and the other elements get one under their own VR.
READ_AS_NUMBERS = (
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsStored",
    "BitsAllocated",
    "SamplesPerPixel",
    "PixelRepresentation",
    "WindowCenter",
    "WindowWidth",
    "RescaleSlope",
    "RescaleIntercept",
    "InstanceNumber",
    "SeriesNumber",
    "PixelSpacing",
)
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT"})


def _value(n: int) -> str:
    # Some with both kinds of quote: repr() escapes one of them, which a plain '...' pattern would not end at.
    return f"V{n:03d}{MARK}{n:03d}" if n % 3 else f"V{n:03d}'{MARK}\"{n:03d}"


def _odd_files(folder: Path) -> int:
    """One file per field: CT_small with that field's value replaced by a unique text holding MARK."""
    base = pydicom.dcmread(SOURCE)
    texts = [e.keyword for e in base if e.VR in _TEXT_VRS and e.keyword and e.keyword not in READ_AS_NUMBERS]
    count = 0
    for n, keyword in enumerate([*READ_AS_NUMBERS, *texts]):
        ds = pydicom.dcmread(SOURCE)
        tag = pydicom.datadict.tag_for_keyword(keyword)
        assert tag is not None
        # Raw, so pydicom writes the text whatever the VR expects (an "IS" of letters, a "US" as "LO").
        vr = ds[tag].VR if tag in ds and ds[tag].VR in _TEXT_VRS else "LO"
        if vr == "PN":  # any text is a valid name
            ds[tag] = DataElement(tag, vr, _value(n))
        else:
            element = DataElement(tag, vr, b"")
            element._value = _value(n)  # noqa: SLF001 - bypasses pydicom's validation on purpose
            ds[tag] = element
        ds.save_as(folder / f"odd{n:03d}.dcm", enforce_file_format=False)
        count += 1
    return count


def test_a_reason_never_quotes_a_header_value() -> None:
    ds = pydicom.dcmread(SOURCE)
    ds.PatientName = "Doe^Jane"
    for message in (
        "invalid literal for int() with base 10: 'Doe^Jane'",
        "could not convert: 'a\\'b\"Doe^Jane'",  # as repr() writes a value holding both quotes
        "unbalanced 'Doe^Jane",
        "unquoted Doe^Jane here",
    ):
        text = reason(ValueError(message), ds)
        assert "Doe" not in text and "Jane" not in text and text.startswith("ValueError: "), text
    assert reason(ValueError("The number of bytes of pixel data is less than expected (8 vs 10 bytes)"), ds) == (
        "ValueError: The number of bytes of pixel data is less than expected (8 vs 10 bytes)"
    )


def test_a_header_value_of_the_wrong_type_is_a_reason_without_it(tmp_path: Path) -> None:
    """Columns written as text (the file's own VR says LO): `int()` failed outside the DICOM error handling and
    the reason quoted it: "unexpected error: ValueError: invalid literal for int() with base 10: '<value>'"."""
    ds = pydicom.dcmread(SOURCE)
    element = DataElement(0x00280011, "LO", b"")
    element._value = "1.2.826.0.1.3680043.2.1143.4879828693"  # noqa: SLF001
    ds[0x00280011] = element
    ds.save_as(tmp_path / "columns.dcm", enforce_file_format=False)
    with pytest.raises(BadImage) as raised:
        decode(tmp_path / "columns.dcm")
    assert "1143" not in str(raised.value) and "DICOM" in str(raised.value), raised.value


@pytest.mark.slow
def test_verbose_ingest_of_odd_headers_shows_and_records_no_header_value(
    database_url: str, tiny_model: str, tmp_path: Path
) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    made = _odd_files(folder)
    assert made > 50
    run = subprocess.run(
        [sys.executable, "-m", "imagedb", "--database-url", database_url, "--verbose", "ingest", str(folder)]
        + ["--collection", "odd", "--model", tiny_model],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "INFO" in run.stderr  # --verbose did show the libraries' log
    assert MARK not in run.stdout and MARK not in run.stderr, [
        line for line in (run.stdout + run.stderr).splitlines() if MARK in line
    ][:5]
    with psycopg.connect(database_url) as conn:
        reasons = [r for (r,) in conn.execute("SELECT reason FROM ingest_errors")]
        stored = conn.execute("SELECT count(*) FROM images").fetchone()
    assert reasons and stored is not None and stored[0] + len(reasons) == made, (stored, reasons)
    assert not [r for r in reasons if MARK in r], reasons
    assert not [r for r in reasons if "unexpected error" in r], reasons
