"""DICOM files: detect them, window their pixels for display, and keep only non-identifying header fields.

De-identification is by allow-list: of a file's header only the fields in KEPT_FIELDS are stored (unless
`keep_phi`), so every field the DICOM basic confidentiality profile (PS3.15 Annex E) lists as identifying is left
out, and so is everything else not listed, private tags included. UIDs never leave this module raw: the store
replaces them by a keyed hash computed in the database (imagedb_uid_hash), whose key only the owner can read.
pydicom is imported lazily: `imagedb --help` and photo-only runs do not pay for it.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagedb.store.records import DicomInfo

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
else:
    Dataset = Any

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
PREAMBLE = 128  # bytes before the "DICM" magic of a DICOM Part 10 file
MAGIC = b"DICM"

# The header fields stored by default: clinically useful, not identifying (none is in PS3.15 Annex E table E.1-1).
# Dates are reduced to the study year (see _study_date); UIDs are stored only as keyed hashes, in their columns.
KEPT_FIELDS = (
    "Modality",
    "BodyPartExamined",
    "Manufacturer",
    "ManufacturerModelName",
    "SOPClassUID",  # a registered, public UID (CT Image Storage...): kept only when pydicom knows its name
    "ImageType",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "SliceLocation",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PatientPosition",
    "SeriesNumber",
    "InstanceNumber",
    "KVP",
    "MagneticFieldStrength",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
)
# Where a file's date comes from, in order of preference.
_DATE_FIELDS = (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"), ("AcquisitionDate", "AcquisitionTime"))
# Binary value representations never stored, not even with keep_phi: pixel data, overlays, blobs.
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# Quoted text as Python's repr writes it (a quote inside is escaped by a backslash).
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{3,}")
# pydicom warns of invalid values quoting them (on stderr, where a patient's name has no business); what cannot be
# read is recorded as the file's reason instead. A filter, not catch_warnings, which is not thread-safe.
warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
# It also logs them ("Invalid value for VR UI: '1.2.840...'") to its own logger, which `imagedb --verbose` would
# print with every other library's: its records stop at its own (silent) handler, whatever the root logger does.
logging.getLogger("pydicom").propagate = False


@dataclass(frozen=True)
class DicomOptions:
    keep_dates: bool = False  # full study date, not only its year
    keep_phi: bool = False  # the whole header, identifying fields and private tags included
    all_frames: bool = False  # every frame of a multi-frame file, not only the middle one


class DicomError(Exception):
    """A DICOM file that cannot be stored; the message is the reason (never a value from the header)."""


def has_preamble(path: Path) -> bool:
    """Whether `path` is a regular file with "DICM" after its 128-byte preamble; never blocks (a FIFO, a device)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return os.pread(fd, PREAMBLE + len(MAGIC), 0)[PREAMBLE:] == MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


def is_dicom(path: Path, data: bytes) -> bool:
    """A DICOM file by name (.dcm, which may lack the preamble) or by content (the preamble and "DICM")."""
    return path.suffix.lower() in DICOM_SUFFIXES or data[PREAMBLE : PREAMBLE + len(MAGIC)] == MAGIC


def read(data: bytes) -> Dataset:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        # force: .dcm files written without the preamble (older tools) still parse.
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise DicomError("DICOM file without pixel data (a report, an RT plan, a DICOMDIR...): nothing to show")
        if "Rows" not in ds or "Columns" not in ds:
            raise DicomError("DICOM pixel data without Rows and Columns in the header: cannot tell its size")
    except DicomError:
        raise
    except (InvalidDicomError, AttributeError, KeyError, ValueError, TypeError, EOFError, OSError) as exc:
        raise DicomError(f"not a readable DICOM file ({type(exc).__name__})") from exc
    return ds


def frames_to_decode(ds: Dataset, options: DicomOptions) -> list[int]:
    """0-based frame indexes to store: the middle frame, or every frame with all_frames."""
    count = frame_count(ds)
    return list(range(count)) if options.all_frames else [count // 2]


def frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def display_pixels(ds: Dataset, index: int) -> np.ndarray:
    """One frame as 8-bit display values (H x W x 3): modality LUT, then the file's VOI LUT or window (else the
    frame's own range), MONOCHROME1 inverted, palette and YBR colour converted to RGB."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

    try:
        arr = pixel_array(ds, index=index if frame_count(ds) > 1 else None)  # YBR comes back as RGB
        photometric = str(ds.get("PhotometricInterpretation", "")).upper()
        if photometric == "PALETTE COLOR":
            return _to_8bit(apply_color_lut(arr, ds), _palette_bits(ds))
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            return _to_8bit(arr[..., :3], int(ds.get("BitsStored") or arr.dtype.itemsize * 8))
        values = apply_modality_lut(arr, ds).astype(np.float64)
        if "VOILUTSequence" in ds:
            shown = _stretch(apply_voi_lut(values, ds, index=0).astype(np.float64))
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            shown = _window(values, ds)
        else:
            shown = _stretch(values)
        if photometric == "MONOCHROME1":
            shown = 255 - shown
        return np.repeat(shown[..., None], 3, axis=2)
    except DicomError:
        raise
    except Exception as exc:  # a missing codec, truncated pixel data, inconsistent sizes...
        raise DicomError(f"cannot decode DICOM pixel data: {reason(exc, ds)}") from exc


def reason(exc: BaseException, ds: Dataset | None = None) -> str:
    """An exception raised while reading `ds`, as one short line without any value of its header.

    pydicom's messages name the codec, the transfer syntax or the sizes, which help; a value they quote from the
    header (an invalid number, a UID) could be anything. So any text of the header is left out, then quoted text,
    and everything after a quote left unbalanced."""
    text = " ".join(str(exc).split())
    for value in sorted(header_texts(ds), key=len, reverse=True) if ds is not None else ():
        text = text.replace(value, "...")
    text = _QUOTED.sub("\0", text)
    cut = min((i for i in (text.find("'"), text.find('"')) if i >= 0), default=len(text))
    text = text[:cut].replace("\0", "'...'")
    return f"{type(exc).__name__}: {text[:200]}".rstrip(": ")


def header_texts(ds: Dataset) -> set[str]:
    """Every run of three or more printable characters in the header's values, nested ones included, as the file
    holds them (never converted: a value that cannot be converted is what an error message would quote)."""
    found: set[str] = set()
    for source in (getattr(ds, "file_meta", None), ds):
        for tag in list(source.keys()) if source is not None else ():
            if tag.group == 0x7FE0:  # pixel data
                continue
            try:
                raw = source.get_item(tag).value
            except Exception:  # noqa: BLE001 - an element pydicom cannot even hand over raw has nothing to scrub
                continue
            data = raw if isinstance(raw, bytes) else str(raw).encode("latin-1", "replace")
            for run in _PRINTABLE_RUN.findall(data):
                text = run.decode("ascii")
                parts = [text, *text.split("\\"), *re.split(r"[\\'\"]", text)]
                found.update(p.strip() for p in parts if len(p.strip()) >= 3)
    return found


def _first(value: Any) -> float:
    from pydicom.multival import MultiValue

    # Window values may be multi-valued (several windows): the first is the default one.
    return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)


def _window(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """PS3.3 C.11.2.1.2: the linear (default), LINEAR_EXACT and SIGMOID window functions, to 0..255."""
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if not math.isfinite(center) or not math.isfinite(width) or width <= 0:
        return _stretch(values)
    if function == "SIGMOID":
        return np.round(255 / (1 + np.exp(-4 * (values - center) / width))).astype(np.uint8)
    if function == "LINEAR_EXACT":
        scaled = (values - center) / width + 0.5
    else:
        if width < 1:
            return _stretch(values)
        scaled = (values - (center - 0.5)) / max(width - 1, 1) + 0.5
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    """The frame's own range to 0..255 (no window in the file); a flat frame is black."""
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.round(np.clip((np.nan_to_num(values, nan=low) - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def _palette_bits(ds: Dataset) -> int:
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    return int(descriptor[2]) if descriptor is not None and len(descriptor) == 3 and descriptor[2] in (8, 16) else 16


def _to_8bit(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    top = float(2 ** max(1, min(bits, 32)) - 1)
    return np.round(np.clip(arr.astype(np.float64) / top, 0, 1) * 255).astype(np.uint8)


def info(ds: Dataset, options: DicomOptions, frame: int | None, frames: int) -> DicomInfo:
    """What is stored of the header: the kept fields (or, with keep_phi, all of it), the UIDs to hash, the date."""
    taken = _study_date(ds)
    return DicomInfo(
        modality=_code(ds.get("Modality")),
        body_part=_code(ds.get("BodyPartExamined")),
        study_uid=_uid(ds.get("StudyInstanceUID")),
        series_uid=_uid(ds.get("SeriesInstanceUID")),
        instance_uid=_uid(ds.get("SOPInstanceUID")),
        study_year=taken.year if taken else None,
        study_date=taken.date() if taken and options.keep_dates else None,
        frame=frame,
        frames=frames,
        header=full_header(ds) if options.keep_phi else kept_header(ds),
    )


def taken_at(record_info: DicomInfo, ds: Dataset, options: DicomOptions) -> datetime | None:
    """The image's date as images.taken_at holds it: the study's date and time with keep_dates, else 1 January of
    the study year (so --after/--before still narrow by year, and no day is stored)."""
    if options.keep_dates:
        return _study_date(ds)
    return datetime(record_info.study_year, 1, 1) if record_info.study_year else None


def _study_date(ds: Dataset) -> datetime | None:
    for date_field, time_field in _DATE_FIELDS:
        text = str(ds.get(date_field) or "").strip()
        if len(text) >= 8 and text[:8].isdigit():
            try:
                day = datetime.strptime(text[:8], "%Y%m%d")
            except ValueError:
                continue
            clock = str(ds.get(time_field) or "").strip().split(".")[0]
            try:
                when = datetime.strptime(clock[:6].ljust(6, "0"), "%H%M%S").time() if clock.isdigit() else None
            except ValueError:
                when = None
            return datetime.combine(day.date(), when) if when else day
    return None


def kept_header(ds: Dataset) -> dict[str, Any]:
    from pydicom.uid import UID

    out: dict[str, Any] = {}
    for keyword in KEPT_FIELDS:
        value = _json(ds.get(keyword))
        if value is None or value == "" or value == []:
            continue
        if keyword == "SOPClassUID" and UID(str(value)).name == str(value):
            continue  # not a registered UID: it could be anything, even an identifying one
        out[keyword] = value
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and UID(str(syntax)).name != str(syntax):
        out["TransferSyntax"] = UID(str(syntax)).name
    return out


def full_header(ds: Dataset) -> dict[str, Any]:
    """Every element but binary ones (pixel data, overlays), sequences as lists of objects: for --keep-phi only."""
    out: dict[str, Any] = {}
    for element in ds:
        if element.VR in _BINARY_VRS or element.tag.group == 0x7FE0:
            continue
        name = element.keyword or f"({element.tag.group:04X},{element.tag.element:04X})"
        if element.VR == "SQ":
            out[name] = [full_header(item) for item in element.value or []]
        else:
            value = _json(element.value)
            if value is not None:
                out[name] = value
    return out


def _json(value: Any) -> Any:
    from pydicom.multival import MultiValue
    from pydicom.valuerep import IS, DSfloat, PersonName

    if value is None:
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, IS):
        return int(value)
    if isinstance(value, DSfloat):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (int, bool)):
        return value
    if isinstance(value, bytes):
        return None
    if isinstance(value, (PersonName, str)):
        return str(value).replace("\x00", "").strip()  # jsonb holds no NUL
    return str(value).replace("\x00", "")


def text(value: Any) -> str | None:
    """A kept text field (manufacturer, model) as stored: no NUL, no surrounding spaces, None when empty."""
    shown = str(value or "").replace("\x00", "").strip()
    return shown[:256] or None


def _code(value: Any) -> str | None:
    text = str(value or "").replace("\x00", "").strip().upper()
    return text[:64] or None


def _uid(value: Any) -> str | None:
    text = str(value or "").replace("\x00", "").strip()
    return text or None
