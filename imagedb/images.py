"""Reading image files: find them, decode each once, and derive metadata, hashes and a thumbnail."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from imagedb.errors import NotFound
from imagedb.store import ImageRecord

SUPPORTED_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
THUMBNAIL_SIZE = 256
# Images above this many pixels are refused before decoding: a small file can expand to gigabytes.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Pillow only warns between MAX_IMAGE_PIXELS and twice that; an error stops the decode instead.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
# Broken EXIF is kept out of the record anyway (see _read_exif); Pillow's warning would only be noise on stderr.
warnings.filterwarnings("ignore", message="Corrupt EXIF data", category=UserWarning)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EXIF_SKIP = {"MakerNote", "UserComment", "PrintImageMatching", "ExifOffset", "GPSInfo", "InterColorProfile"}


class BadImage(Exception):
    """A file that cannot be stored; the message is the reason recorded in ingest_errors."""


@dataclass
class Decoded:
    record: ImageRecord
    pixels: Image.Image  # upright RGB, reduced in size where the format allows: what the embedder sees


def find_images(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every image file under the given files and folders (recursive), absolute and sorted, without repeats."""
    found: set[Path] = set()
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise NotFound(f"no such file or folder: {given}")
        if path.is_dir():
            for root, _dirs, files in os.walk(path, followlinks=False):
                found.update(Path(root, f).absolute() for f in files if Path(f).suffix.lower() in SUPPORTED_SUFFIXES)
        else:
            found.add(path.absolute())
    return sorted(found)


def file_mtime(stat: os.stat_result) -> datetime:
    """Modification time at microsecond precision, exact, so a stored value compares equal on rerun."""
    return _EPOCH + timedelta(microseconds=stat.st_mtime_ns // 1000)


def decode(path: Path, *, keep_gps: bool = False, min_side: int = 224) -> Decoded:
    """Read and decode a file once; raises BadImage with a reason for anything that cannot be stored."""
    try:
        stat = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise BadImage(f"cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise BadImage("empty file")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise BadImage("not an image, or a format Pillow cannot read") from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadImage(f"refused as a decompression bomb: {exc}") from exc
    except Exception as exc:  # Pillow raises many types for a broken header
        raise BadImage(f"broken image header: {exc}") from exc
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise BadImage(f"refused as a decompression bomb: {width}x{height} pixels exceeds {MAX_PIXELS}")
    fmt = image.format or path.suffix.lstrip(".").upper()
    tags = _read_exif(image, keep_gps)
    try:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale for free; keep at least what the thumbnail and model need.
        image.draft("RGB", (max(min_side, THUMBNAIL_SIZE),) * 2)
        image.load()
        pixels = _to_rgb(_upright(image))
    except Exception as exc:  # truncated data, unsupported modes...
        raise BadImage(f"cannot decode image: {exc}") from exc
    thumbnail, thumbnail_size = make_thumbnail(pixels)
    record = ImageRecord(
        path=str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=stat.st_size,
        mtime=file_mtime(stat),
        width=width,
        height=height,
        format=fmt,
        taken_at=_taken_at(tags),
        camera_make=_text(tags.get("Make")),
        camera_model=_text(tags.get("Model")),
        orientation=tags.get("Orientation") if isinstance(tags.get("Orientation"), int) else None,
        exif=tags,
        thumbnail=thumbnail,
        thumbnail_size=thumbnail_size,
        dhash=perceptual_hash(thumbnail),
    )
    return Decoded(record, pixels)


def _read_exif(image: Image.Image, keep_gps: bool) -> dict[str, Any]:
    # Broken EXIF is common (editors, phones, strippers) and says nothing about the pixels: keep the image.
    try:
        return exif_dict(image.getexif(), keep_gps=keep_gps)
    except Exception:
        return {}


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # an orientation tag that cannot be applied: the pixels as stored
        return image


def make_thumbnail(pixels: Image.Image) -> tuple[bytes, tuple[int, int]]:
    thumb = pixels.copy()
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=85)
    return buf.getvalue(), thumb.size


def perceptual_hash(thumbnail_jpeg: bytes) -> str:
    """64-bit difference hash (imagehash.dhash) as a string of 0 and 1, pgvector's bit(64) text form.

    Taken from the stored thumbnail, not the original, so that `imagedb db reindex --hashes` can compute the same
    value for old rows without the files.
    """
    import imagehash

    with Image.open(io.BytesIO(thumbnail_jpeg)) as thumb:
        bits = imagehash.dhash(thumb).hash.flatten()
    return "".join("1" if b else "0" for b in bits)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become white, as viewers show them, instead of whatever colour hides beneath.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clip everything above 255 to white.
        return image.point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")


def exif_dict(exif: Image.Exif, *, keep_gps: bool) -> dict[str, Any]:
    """EXIF as JSON-ready {tag name: value}; GPS only when asked for, since it says where someone lives."""
    merged: dict[int, Any] = dict(exif.items())
    merged.update(exif.get_ifd(ExifTags.IFD.Exif))
    tags = {ExifTags.TAGS.get(k, str(k)): v for k, v in merged.items()}
    out = {name: _json_value(v) for name, v in tags.items() if name not in _EXIF_SKIP}
    if keep_gps:
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        if gps:
            out["GPSInfo"] = {ExifTags.GPSTAGS.get(k, str(k)): _json_value(v) for k, v in gps.items()}
    return {k: v for k, v in out.items() if v is not None}


def _json_value(value: Any) -> Any:
    if isinstance(value, TiffImagePlugin.IFDRational):
        return float(value) if value.denominator else None
    if isinstance(value, bytes):
        text = value.rstrip(b"\x00")
        return text.decode("ascii") if text.isascii() and len(text) <= 256 else None
    if isinstance(value, str):
        return value.replace("\x00", "").strip()  # PostgreSQL's jsonb cannot hold NUL characters
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return str(value)


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _taken_at(tags: dict[str, Any]) -> datetime | None:
    for key in ("DateTimeOriginal", "DateTimeDigitized", "DateTime"):
        value = tags.get(key)
        if isinstance(value, str):
            try:
                return datetime.strptime(value.strip()[:19], "%Y:%m:%d %H:%M:%S")
            except ValueError:
                continue
    return None
