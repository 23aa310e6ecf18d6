"""Decoding image files: each read and decoded once, within limits, into a record (metadata, hashes, a thumbnail)
and upright pixels shrunk to what the thumbnail and the models need."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from imagedb import dicom, exif
from imagedb.dicom import DicomOptions
from imagedb.files import MAX_FILE_BYTES, BadImage, file_mtime, read_regular_file
from imagedb.store import ImageRecord
from imagedb.store.records import frame_path
from imagedb.thumbnails import THUMBNAIL_SIZE, make_thumbnail, perceptual_hash

try:  # HEIC/HEIF, as phones write them; Pillow reads AVIF itself (features.check("avif"))
    from pillow_heif import register_heif_opener
except ImportError:  # the plugin is a dependency; without it .heic files are recorded as unreadable
    pass
else:
    register_heif_opener()

# Images above this many pixels are refused before decoding: a small file can expand to gigabytes.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Decodes that hold more pixels than this at once (after JPEG's reduced-scale decoding) take turns, at most
# LARGE_DECODES_AT_ONCE together: a folder of huge PNGs then costs a few hundred MB, not workers x 360 MB.
LARGE_DECODE_PIXELS = 24_000_000
LARGE_DECODES_AT_ONCE = 2
# Images longer than this many times their width (or wider than their height), and longer than MAX_STRIP_SIDE,
# are refused before decoding. Pillow holds a pointer for every row, so a 97 KB PNG of 1 x 50,000,000 pixels cost
# 600 MB to decode and 1.1 GB in all; such a strip has no picture to show or search (its thumbnail would be under a
# pixel wide). Shorter strips (up to the largest side JPEG and WebP allow) cost little and are stored.
MAX_ASPECT_RATIO = 1000
MAX_STRIP_SIDE = 65_535
# The working pixels' longer side is at most this many times the working side: a panorama up to 16:1 keeps its
# shorter side at the working side, a longer one is reduced further, so every image costs about the same after
# decoding, whatever its shape.
WORKING_LONG_SIDES = 16
_large_decodes = threading.BoundedSemaphore(LARGE_DECODES_AT_ONCE)
# Pillow only warns between MAX_IMAGE_PIXELS and twice that; an error stops the decode instead.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

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


@dataclass
class Decoded:
    record: ImageRecord
    # Upright RGB, shrunk to about the working side (a few hundred pixels): what the thumbnail and embedder need.
    pixels: Image.Image
    # The other frames of a multi-frame DICOM file, when every frame is stored (DicomOptions.all_frames).
    more: list[Decoded] = field(default_factory=list)


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
    shrunk to the working side, the longer side to at most WORKING_LONG_SIDES times it, before any conversion or
    copy; images far longer than wide are refused unread (MAX_ASPECT_RATIO).
    """
    data, info = read_regular_file(path)
    if not data:
        raise BadImage("empty file")
    if dicom.is_dicom(path, data):
        return _decode_dicom(path, data, info, dicom_options, decode_limits(min_side).working_side)
    image = _open(data)
    width, height = image.size
    _check_size(width, height)
    # MPO is a JPEG with more pictures appended (phones write a depth map or a second exposure); the first is
    # what is decoded, and the file is a JPEG to filters, to the content type of its original and to BI tools.
    fmt = "JPEG" if image.format == "MPO" else image.format or path.suffix.lstrip(".").upper()
    tags = exif.read(image, keep_gps, keep_identifying)
    # pillow-heif turns HEIC upright itself (and resets the tag), keeping what the file said in the info.
    turned_by_plugin = "original_orientation" in image.info
    orientation = image.info["original_orientation"] if turned_by_plugin else exif.orientation(image)
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
        taken_at=exif.taken_at(tags),
        camera_make=exif.text(tags.get("Make")),
        camera_model=exif.text(tags.get("Model")),
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
    except dicom.DicomError as exc:
        raise BadImage(str(exc)) from exc
    try:
        width, height = int(ds.Columns), int(ds.Rows)
        _check_size(width, height)
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
    except BadImage:
        raise
    except dicom.DicomError as exc:
        raise BadImage(str(exc)) from exc
    except Exception as exc:  # a header value of the wrong type or form: the reason must not quote it
        raise BadImage(f"cannot read this DICOM file's header: {dicom.reason(exc, ds)}") from exc
    main = len(decoded) // 2 if len(decoded) > 1 else 0  # the middle frame keeps the file's own path
    first = decoded[main]
    first.more = [d for n, d in enumerate(decoded) if n != main]
    return first


def _dicom_frame(
    base: ImageRecord, ds: dicom.Dataset, options: DicomOptions, index: int, frames: int, side: int
) -> Decoded:
    if base.width * base.height > LARGE_DECODE_PIXELS:
        with _large_decodes:  # the full-size frame and its RGB copy exist only in here
            pixels = _dicom_pixels(ds, index, side)
    else:
        pixels = _dicom_pixels(ds, index, side)
    thumbnail, thumbnail_size = make_thumbnail(pixels)
    details = dicom.info(ds, options, frame=index + 1, frames=frames)
    own_row = options.all_frames and frames > 1 and index != frames // 2
    record = replace(
        base,
        # Frames other than the middle one are rows of their own, named after the file; their content hash differs
        # too, so that ingest does not give them the embedding of the whole file's first stored frame.
        path=frame_path(base.path, index + 1) if own_row else base.path,
        sha256=hashlib.sha256(frame_path(base.sha256, index + 1).encode()).hexdigest() if own_row else base.sha256,
        taken_at=dicom.taken_at(details, ds, options),
        thumbnail=thumbnail,
        thumbnail_size=thumbnail_size,
        dhash=perceptual_hash(thumbnail),
        dicom=details,
    )
    return Decoded(record, pixels)


def _dicom_pixels(ds: dicom.Dataset, index: int, side: int) -> Image.Image:
    return _shrink(Image.fromarray(dicom.display_pixels(ds, index), "RGB"), side)


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise BadImage(f"refused as a decompression bomb: {width}x{height} pixels exceeds {MAX_PIXELS}")
    if width < 1 or height < 1:
        raise BadImage(f"refused: an image of {width}x{height} pixels has nothing to show")
    if max(width, height) > max(MAX_STRIP_SIDE, MAX_ASPECT_RATIO * min(width, height)):
        raise BadImage(
            f"refused: {width}x{height} pixels is more than {MAX_ASPECT_RATIO} times longer than wide,"
            " a strip with no picture to show or search"
        )


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise BadImage("not an image, or a format Pillow cannot read") from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadImage(f"refused as a decompression bomb: {exc}") from exc
    except Exception as exc:  # Pillow raises many types for a broken header
        raise BadImage(f"broken image header: {exc}") from exc


def _load_shrunk(image: Image.Image, side: int) -> Image.Image:
    image.load()
    return _shrink(image, side)  # the caller's reference is replaced: the full-size pixels are freed


def _shrink(image: Image.Image, side: int) -> Image.Image:
    """The image reduced (by an integer factor) until its shorter side is below 2 * side and its longer side at most
    WORKING_LONG_SIDES * side; unchanged if smaller."""
    factor = max(min(image.size) // side, -(-max(image.size) // (WORKING_LONG_SIDES * side)))
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
