"""EXIF: the fields kept (GPS and fields that identify a person or a device only when asked for), as JSON, and
the date, camera and orientation read from them."""

from __future__ import annotations

import warnings
from datetime import datetime
from typing import Any

from PIL import ExifTags, Image, TiffImagePlugin

# Broken EXIF is kept out of the record anyway (see read); Pillow's warning would only be noise on stderr.
warnings.filterwarnings("ignore", message="Corrupt EXIF data", category=UserWarning)

# Never stored: binary blobs (MakerNote, UserComment's charset-prefixed bytes), pointers, and GPS (see exif_dict).
_EXIF_SKIP = {"MakerNote", "UserComment", "PrintImageMatching", "ExifOffset", "GPSInfo", "InterColorProfile"}
# EXIF fields that identify a person or a device (or hold text a person typed, which often names people and
# places): kept out unless `keep_identifying`. ImageDescription is free text like UserComment and XPComment.
# XMLPacket (XMP) and IPTCNAA (IPTC) are whole metadata blocks with creator names, captions and locations.
# 65000/65001 are OwnerName and SerialNumber as some cameras write them (tags Pillow has no name for).
IDENTIFYING_EXIF_TAGS = frozenset(
    {
        "Artist",
        "BodySerialNumber",
        "CameraOwnerName",
        "CameraSerialNumber",
        "Copyright",
        "DocumentName",
        "HostComputer",
        "ImageDescription",
        "ImageUniqueID",
        "IPTCNAA",
        "LensSerialNumber",
        "RawDataUniqueID",
        "XMLPacket",
        "XPAuthor",
        "XPComment",
        "XPKeywords",
        "XPSubject",
        "XPTitle",
        "65000",
        "65001",
    }
)
_IDENTIFYING_WORDS = ("serial", "owner")  # InternalSerialNumber and others under names not listed above


def read(image: Image.Image, keep_gps: bool, keep_identifying: bool) -> dict[str, Any]:
    """The image's EXIF fields to store (see exif_dict); none when its EXIF is broken."""
    # Broken EXIF is common (editors, phones, strippers) and says nothing about the pixels: keep the image.
    try:
        return exif_dict(image.getexif(), keep_gps=keep_gps, keep_identifying=keep_identifying)
    except Exception:
        return {}


def orientation(image: Image.Image) -> int | None:
    """The EXIF orientation (1..8), as the file says it."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # broken EXIF: the pixels as stored
        return None
    return value if isinstance(value, int) else None


def exif_dict(exif: Image.Exif, *, keep_gps: bool, keep_identifying: bool = False) -> dict[str, Any]:
    """EXIF as JSON-ready {tag name: value}; GPS only when asked for, since it says where someone lives, and
    fields that identify a person or a device (IDENTIFYING_EXIF_TAGS) only when asked for too."""
    merged: dict[int, Any] = dict(exif.items())
    merged.update(exif.get_ifd(ExifTags.IFD.Exif))
    tags = {ExifTags.TAGS.get(k, str(k)): v for k, v in merged.items()}
    out = {
        name: _json_value(v)
        for name, v in tags.items()
        if name not in _EXIF_SKIP and (keep_identifying or not is_identifying(name))
    }
    if keep_gps:
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        if gps:
            out["GPSInfo"] = {ExifTags.GPSTAGS.get(k, str(k)): _json_value(v) for k, v in gps.items()}
    return {k: v for k, v in out.items() if v is not None}


def is_identifying(tag: str) -> bool:
    """Whether an EXIF field (by Pillow's name) names a person or a device, or holds text a person typed."""
    return tag in IDENTIFYING_EXIF_TAGS or any(word in tag.lower() for word in _IDENTIFYING_WORDS)


def _json_value(value: Any) -> Any:
    if isinstance(value, TiffImagePlugin.IFDRational):
        return float(value) if value.denominator else None
    if isinstance(value, bytes):
        text = value.rstrip(b"\x00")
        return _json_value(text.decode("ascii")) if text.isascii() and len(text) <= 256 else None
    if isinstance(value, str):
        return value.replace("\x00", "").strip()  # PostgreSQL's jsonb cannot hold NUL characters
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return str(value)


def text(value: Any) -> str | None:
    """A text field (camera make, model) stripped; None when empty or not text."""
    return value.strip() or None if isinstance(value, str) else None


def taken_at(tags: dict[str, Any]) -> datetime | None:
    """When the photo was taken, from the first EXIF date field that parses."""
    for key in ("DateTimeOriginal", "DateTimeDigitized", "DateTime"):
        value = tags.get(key)
        if isinstance(value, str):
            try:
                return datetime.strptime(value.strip()[:19], "%Y:%m:%d %H:%M:%S")
            except ValueError:
                continue
    return None
