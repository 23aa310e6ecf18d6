"""Reading image files: find them, decode each once, and derive metadata, hashes and a thumbnail."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image, TiffImagePlugin, UnidentifiedImageError

from imagedb import dicom
from imagedb.dicom import DicomOptions
from imagedb.errors import NotFound
from imagedb.store import ImageRecord

try:  # HEIC/HEIF, as phones write them; Pillow reads AVIF itself (features.check("avif"))
    from pillow_heif import register_heif_opener
except ImportError:  # the plugin is a dependency; without it .heic files are recorded as unreadable
    pass
else:
    register_heif_opener()

SUPPORTED_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
# DICOM files are found by these names too, and by the "DICM" magic in files without a suffix (dicom.has_preamble).
SUPPORTED_SUFFIXES |= dicom.DICOM_SUFFIXES
# For `imagedb ingest --help` and the README.
SUPPORTED_FORMATS = "JPEG, PNG, WebP, GIF (first frame), BMP, TIFF, HEIC/HEIF, AVIF, DICOM"
THUMBNAIL_SIZE = 256
# Images above this many pixels are refused before decoding: a small file can expand to gigabytes.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Files above this size are refused unread: far above any real photo (a 100 MP camera writes ~40 MB JPEGs,
# ~200 MB 16-bit TIFFs), low enough that a few decode workers cannot exhaust memory on file bytes alone.
MAX_FILE_BYTES = 256 * 2**20
# Decodes that hold more pixels than this at once (after JPEG's reduced-scale decoding) take turns, at most
# LARGE_DECODES_AT_ONCE together: a folder of huge PNGs then costs a few hundred MB, not workers x 360 MB.
LARGE_DECODE_PIXELS = 24_000_000
LARGE_DECODES_AT_ONCE = 2
_large_decodes = threading.BoundedSemaphore(LARGE_DECODES_AT_ONCE)
# Pillow only warns between MAX_IMAGE_PIXELS and twice that; an error stops the decode instead.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
# Broken EXIF is kept out of the record anyway (see _read_exif); Pillow's warning would only be noise on stderr.
warnings.filterwarnings("ignore", message="Corrupt EXIF data", category=UserWarning)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
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
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
# Quarter turns and flips for EXIF orientations 2..8, as ImageOps.exif_transpose applies them.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes Image.reduce averages correctly; palette, 1-bit and 16-bit images are sampled instead (see _shrink).
_REDUCIBLE_MODES = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F"})


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding one image may cost; the server can share these for uploads."""

    max_file_bytes: int  # larger files are refused unread
    max_pixels: int  # larger images are refused before decoding (decompression bombs)
    working_side: int  # decoded pixels are shrunk until their shorter side is below twice this


DECODE_LIMITS = DecodeLimits(MAX_FILE_BYTES, MAX_PIXELS, THUMBNAIL_SIZE)


def decode_limits(min_side: int = 224) -> DecodeLimits:
    """The limits decode() applies for a model whose input is `min_side` pixels square."""
    return DecodeLimits(MAX_FILE_BYTES, MAX_PIXELS, max(min_side, THUMBNAIL_SIZE))


class BadImage(Exception):
    """A file that cannot be stored; the message is the reason recorded in ingest_errors."""


@dataclass
class Decoded:
    record: ImageRecord
    # Upright RGB, shrunk to about the working side (a few hundred pixels): what the thumbnail and embedder need.
    pixels: Image.Image
    # The other frames of a multi-frame DICOM file, when every frame is stored (DicomOptions.all_frames).
    more: list[Decoded] = field(default_factory=list)


def readable(text: str | os.PathLike[str]) -> str:
    """A path or message safe to print and store: bytes of a non-UTF-8 name as \\xNN, instead of surrogates.

    Python hands such names over with surrogateescape; psycopg and click refuse to encode them.
    """
    text = os.fspath(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape") if _only_escapes(text) else text.encode("utf-8", "replace")
        return raw.decode("utf-8", "backslashreplace")


def _only_escapes(text: str) -> bool:
    # surrogateescape can turn back only U+DC80..U+DCFF; any other lone surrogate came from elsewhere.
    return all(not "\ud800" <= c <= "\udfff" or "\udc80" <= c <= "\udcff" for c in text)


def check_paths(paths: Iterable[str | os.PathLike[str]]) -> None:
    """NotFound for a path that does not exist: cheap, so the CLI can say so before starting anything."""
    for given in paths:
        if not os.path.lexists(Path(given).expanduser()):
            raise NotFound(f"no such file or folder: {readable(given)}")


def find_images(paths: Iterable[str | os.PathLike[str]], on_found: Callable[[int], None] | None = None) -> list[Path]:
    """Every image file under the given files and folders (recursive), absolute and sorted, without repeats.

    Entries are only listed here, never opened: decode() decides what each one is. Folders are walked
    without following symlinks; `on_found(n)` is told of each folder's images as they are found.
    """
    check_paths(paths)
    found: set[Path] = set()
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            for folder, files in _walk(path):
                here = {Path(folder, f).absolute() for f in files if _wanted(Path(folder, f))}
                found.update(here)
                if on_found and here:
                    on_found(len(here))
        else:
            found.add(path.absolute())
            if on_found:
                on_found(1)
    return sorted(found)


def _walk(top: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder, names of its non-folder entries) for `top` and every folder below it, without following symlinks.

    A loop, not os.walk: before Python 3.12 os.walk recurses, and a folder nested a few thousand levels deep
    (anyone who can write into the folder can make one) ended the whole run with a RecursionError. Folders that
    cannot be read are passed over, as os.walk does.
    """
    stack = [os.fspath(top)]
    while stack:
        folder = stack.pop()
        files: list[str] = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        is_folder = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_folder = False
                    if is_folder:
                        stack.append(entry.path)
                    else:
                        files.append(entry.name)
        except OSError:
            continue
        yield folder, files


def outside(path: Path, roots: Sequence[Path]) -> str | None:
    """Why a file found under `roots` must not be read: a symlink whose target lies outside every one of them.

    Whoever can write into an ingested folder could otherwise link to the ingesting user's private files, which
    ingest would store and `imagedb serve` would hand out. A file named on the command line is its own root.
    """
    if not path.is_symlink():
        return None
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None  # dangling or looping: read_regular_file says why
    if not target.is_file():
        return None  # a device, FIFO or folder: read_regular_file names it
    if any(target == root or target.is_relative_to(root) for root in roots):
        return None
    return "a symbolic link to a file outside the folders given: skipped (give that folder too to ingest it)"


def _wanted(path: Path) -> bool:
    # A file without a suffix is opened (never blocking) for the DICOM magic: DICOM exports often have no suffix.
    suffix = path.suffix.lower()
    return suffix in SUPPORTED_SUFFIXES or (not suffix and dicom.has_preamble(path))


def file_mtime(stat: os.stat_result) -> datetime:
    """Modification time at microsecond precision, exact, so a stored value compares equal on rerun."""
    return _EPOCH + timedelta(microseconds=stat.st_mtime_ns // 1000)


def read_regular_file(path: Path, max_bytes: int = MAX_FILE_BYTES) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file, at most `max_bytes`; BadImage for anything else, without ever blocking.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; fstat on the open file
    (not the name, which may change in between) then refuses FIFOs, devices (a symlink to /dev/zero) and folders.
    """
    _check_name(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        kind = _kind(path)  # opening a socket fails with ENXIO: say what it is instead
        raise BadImage(f"{kind}, not a regular file" if kind else f"cannot read file: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        kind = _kind_of_mode(info.st_mode)
        if kind:
            raise BadImage(f"{kind}, not a regular file")
        if info.st_size > max_bytes:
            raise BadImage(f"larger than {max_bytes // 2**20} MiB")
        data = _read_at_most(fd, info.st_size, max_bytes)
    except OSError as exc:
        raise BadImage(f"cannot read file: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while we read it
        raise BadImage(f"larger than {max_bytes // 2**20} MiB")
    return data, info


def _read_at_most(fd: int, expected: int, max_bytes: int) -> bytes:
    # One read of the size fstat gave (no buffer of max_bytes for every small file), then more only if the file
    # turns out longer (growing, or /proc-like files that report size 0); stops past max_bytes.
    parts = []
    total = 0
    want = min(expected, max_bytes) + 1
    while total <= max_bytes:
        chunk = os.read(fd, want)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        want = min(2**20, max_bytes + 1 - total) if total >= expected else expected - total + 1
    return b"".join(parts)


def _check_name(path: Path) -> None:
    text = str(path)
    if readable(text) == text:
        return
    where = "folder" if readable(path.name) == path.name else "file"
    raise BadImage(f"{where} name is not valid UTF-8: rename it (for example with convmv)")


def _kind(path: Path) -> str | None:
    try:
        return _kind_of_mode(os.stat(path).st_mode)
    except OSError:
        return None


def _kind_of_mode(mode: int) -> str | None:
    return next((name for test, name in _KINDS if test(mode)), None) if not stat.S_ISREG(mode) else None


def decode(
    path: Path,
    *,
    keep_gps: bool = False,
    keep_identifying: bool = False,
    min_side: int = 224,
    dicom_options: DicomOptions = DicomOptions(),
) -> Decoded:
    """Read and decode a file once; raises BadImage with a reason for anything that cannot be stored.

    Memory: the file's bytes (at most MAX_FILE_BYTES) plus the decoded pixels, which JPEG decodes at reduced
    scale and other formats hold at full size (at most MAX_PIXELS in the file's own mode) only until they are
    shrunk to the working side, before any conversion or copy.
    """
    data, info = read_regular_file(path)
    if not data:
        raise BadImage("empty file")
    if dicom.is_dicom(path, data):
        return _decode_dicom(path, data, info, dicom_options, decode_limits(min_side).working_side)
    image = _open(data)
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise BadImage(f"refused as a decompression bomb: {width}x{height} pixels exceeds {MAX_PIXELS}")
    # MPO is a JPEG with more pictures appended (phones write a depth map or a second exposure); the first is
    # what is decoded, and the file is a JPEG to filters, to the content type of its original and to BI tools.
    fmt = "JPEG" if image.format == "MPO" else image.format or path.suffix.lstrip(".").upper()
    tags = _read_exif(image, keep_gps, keep_identifying)
    # pillow-heif turns HEIC upright itself (and resets the tag), keeping what the file said in the info.
    turned_by_plugin = "original_orientation" in image.info
    orientation = image.info["original_orientation"] if turned_by_plugin else _orientation(image)
    if turned_by_plugin and orientation in (5, 6, 7, 8):
        width, height = height, width  # as stored in the file, like the other formats
    side = decode_limits(min_side).working_side
    try:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale for free; keep at least what the thumbnail and model need.
        image.draft("RGB", (side, side))
        if image.width * image.height > LARGE_DECODE_PIXELS:
            with _large_decodes:
                image = _load_shrunk(image, side)
        else:
            image = _load_shrunk(image, side)
        if orientation in _TRANSPOSE and not turned_by_plugin:
            image = image.transpose(_TRANSPOSE[orientation])
        pixels = _shrink(_to_rgb(image), side)  # palette and 16-bit images were only sampled down to 2 * side
    except Exception as exc:  # truncated data, unsupported modes...
        raise BadImage(f"cannot decode image: {exc}") from exc
    del image
    thumbnail, thumbnail_size = make_thumbnail(pixels)
    record = ImageRecord(
        path=str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=info.st_size,
        mtime=file_mtime(info),
        width=width,
        height=height,
        format=fmt,
        taken_at=_taken_at(tags),
        camera_make=_text(tags.get("Make")),
        camera_model=_text(tags.get("Model")),
        orientation=orientation if isinstance(orientation, int) else None,
        exif=tags,
        thumbnail=thumbnail,
        thumbnail_size=thumbnail_size,
        dhash=perceptual_hash(thumbnail),
    )
    return Decoded(record, pixels)


def _decode_dicom(path: Path, data: bytes, info: os.stat_result, options: DicomOptions, side: int) -> Decoded:
    """The middle frame of a DICOM file (or every frame, each with `#frame=N` after the path), windowed for display,
    with only the non-identifying header fields (see imagedb.dicom)."""
    try:
        ds = dicom.read(data)
        width, height = int(ds.Columns), int(ds.Rows)
        if width * height > MAX_PIXELS:
            raise BadImage(f"refused as a decompression bomb: {width}x{height} pixels exceeds {MAX_PIXELS}")
        frames = dicom.frame_count(ds)
        indexes = dicom.frames_to_decode(ds, options)
        sha256 = hashlib.sha256(data).hexdigest()
        base = ImageRecord(
            path=str(path),
            sha256=sha256,
            size_bytes=info.st_size,
            mtime=file_mtime(info),
            width=width,
            height=height,
            format="DICOM",
            taken_at=None,
            camera_make=dicom.text(ds.get("Manufacturer")),  # the scanner's maker and model, as for cameras
            camera_model=dicom.text(ds.get("ManufacturerModelName")),
            orientation=None,
            exif={},
            thumbnail=b"",
            thumbnail_size=(0, 0),
        )
        decoded = [_dicom_frame(base, ds, options, index, frames, side) for index in indexes]
    except dicom.DicomError as exc:
        raise BadImage(str(exc)) from exc
    main = len(decoded) // 2 if len(decoded) > 1 else 0  # the middle frame keeps the file's own path
    first = decoded[main]
    first.more = [d for n, d in enumerate(decoded) if n != main]
    return first


def _dicom_frame(
    base: ImageRecord, ds: dicom.Dataset, options: DicomOptions, index: int, frames: int, side: int
) -> Decoded:
    if base.width * base.height > LARGE_DECODE_PIXELS:
        with _large_decodes:
            array = dicom.display_pixels(ds, index)
    else:
        array = dicom.display_pixels(ds, index)
    pixels = _shrink(Image.fromarray(array, "RGB"), side)
    del array
    thumbnail, thumbnail_size = make_thumbnail(pixels)
    details = dicom.info(ds, options, frame=index + 1, frames=frames)
    own_row = options.all_frames and frames > 1 and index != frames // 2
    record = replace(
        base,
        # Frames other than the middle one are rows of their own, named after the file; their content hash differs
        # too, so that ingest does not give them the embedding of the whole file's first stored frame.
        path=f"{base.path}#frame={index + 1}" if own_row else base.path,
        sha256=hashlib.sha256(f"{base.sha256}#frame={index + 1}".encode()).hexdigest() if own_row else base.sha256,
        taken_at=dicom.taken_at(details, ds, options),
        thumbnail=thumbnail,
        thumbnail_size=thumbnail_size,
        dhash=perceptual_hash(thumbnail),
        dicom=details,
    )
    return Decoded(record, pixels)


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise BadImage("not an image, or a format Pillow cannot read") from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadImage(f"refused as a decompression bomb: {exc}") from exc
    except Exception as exc:  # Pillow raises many types for a broken header
        raise BadImage(f"broken image header: {exc}") from exc


def _orientation(image: Image.Image) -> int | None:
    try:
        value = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # broken EXIF: the pixels as stored
        return None
    return value if isinstance(value, int) else None


def _load_shrunk(image: Image.Image, side: int) -> Image.Image:
    image.load()
    return _shrink(image, side)  # the caller's reference is replaced: the full-size pixels are freed


def _shrink(image: Image.Image, side: int) -> Image.Image:
    """The image reduced (by an integer factor) until its shorter side is below 2 * side; unchanged if smaller."""
    factor = min(image.size) // side
    if factor < 2:
        return image
    if image.mode == "1":
        image = image.convert("L")  # one byte a pixel; averaging keeps thin lines that sampling would lose
    if image.mode in _REDUCIBLE_MODES:
        return image.reduce(factor)
    # Averaging palette indices is meaningless and 16-bit modes cannot be reduced: sample, keeping twice the
    # working side so the thumbnail's and the model's own resampling still smooth.
    factor //= 2
    if factor < 2:
        return image
    return image.resize((image.width // factor, image.height // factor), Image.Resampling.NEAREST)


def _read_exif(image: Image.Image, keep_gps: bool, keep_identifying: bool) -> dict[str, Any]:
    # Broken EXIF is common (editors, phones, strippers) and says nothing about the pixels: keep the image.
    try:
        return exif_dict(image.getexif(), keep_gps=keep_gps, keep_identifying=keep_identifying)
    except Exception:
        return {}


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
