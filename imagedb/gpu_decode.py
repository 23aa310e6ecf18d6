"""JPEG decoding on the embedder's GPU (nvJPEG through torchvision.io.decode_jpeg), for ingest on CUDA.

The CPU does only what needs the file's bytes: reading them, SHA-256, the header and EXIF (Pillow reads them
without decoding pixels). The GPU decodes a whole batch at once and shrinks each image to the working side there;
only those few hundred pixels come back, for the thumbnail, its perceptual hash and the model's preprocessing.

Everything else goes the CPU way (images.decode): other formats, CMYK JPEGs, images above the pixel limit, and
any file the GPU decoder refuses. What is stored is the same as the CPU way's, within these tolerances
(tests/test_gpu_decode.py checks them through torchvision's CPU decoder, the GPU where there is one):
SHA-256, size, dimensions, format, orientation, EXIF and thumbnail size equal; the shrunk pixels differ by
resampling only (an antialiased resize of the full decode instead of libjpeg's DCT scaling and a box reduce),
the thumbnail's pixels by at most a few levels on average, its perceptual hash by a few bits.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from imagedb import exif
from imagedb.files import BadImage, file_mtime, read_regular_file
from imagedb.images import MAX_PIXELS, Decoded, decode_limits
from imagedb.store import ImageRecord
from imagedb.thumbnails import make_thumbnail, perceptual_hash

T = TypeVar("T")
# Colour JPEGs (YCbCr) and greyscale; CMYK and YCCK ones go the CPU way (Pillow converts them as viewers do).
_GPU_MODES = frozenset({"RGB", "L"})
_JPEG_MAGIC = b"\xff\xd8\xff"
# IMAGEDB_GPU_DECODE=0 keeps decoding on the CPU even when the embedder runs on a GPU (to compare, or to work
# around a driver's decoder).
ENABLE_ENV = "IMAGEDB_GPU_DECODE"
# Files decoded on the device at once: their full-size pixels (36 MB for 12 megapixels) are held together until
# shrunk, so a batch of 128 camera photos holds about 1 GB of GPU memory at a time, not 4.6.
DECODE_CHUNK = 32
# torchvision 0.29 warns on each decode that TorchCodec supersedes it; its decoders still work.
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)


def device_for(embedder_device: str) -> str | None:
    """The device JPEGs decode on for an embedder on `embedder_device`: its own when it is a CUDA GPU."""
    if not str(embedder_device).startswith("cuda") or os.environ.get(ENABLE_ENV, "").strip() == "0":
        return None
    return str(embedder_device)


@dataclass
class Header:
    """A JPEG's bytes and everything read from them before its pixels are decoded."""

    path: Path
    data: bytes
    record: ImageRecord  # without thumbnail and perceptual hash yet
    orientation: int | None


def read_header(path: Path, *, keep_gps: bool, keep_identifying: bool) -> Header | None:
    """The header of a JPEG the GPU can decode; None for anything the CPU way should take (which also says why a
    file cannot be read at all)."""
    try:
        data, info = read_regular_file(path)
    except (BadImage, OSError):
        return None
    if not data.startswith(_JPEG_MAGIC):
        return None
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in ("JPEG", "MPO") or image.mode not in _GPU_MODES:
            return None
        width, height = image.size
        if width * height > MAX_PIXELS:
            return None
        tags = exif.read(image, keep_gps, keep_identifying)
        orientation = exif.orientation(image)
    except Exception:  # noqa: BLE001 - a broken header: the CPU way says what is wrong with it
        return None
    record = ImageRecord(
        path=str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=info.st_size,
        mtime=file_mtime(info),
        width=width,
        height=height,
        format="JPEG",
        taken_at=exif.taken_at(tags),
        camera_make=exif.text(tags.get("Make")),
        camera_model=exif.text(tags.get("Model")),
        orientation=orientation if isinstance(orientation, int) else None,
        exif=tags,
        thumbnail=b"",
        thumbnail_size=(0, 0),
    )
    return Header(path, data, record, orientation)


def working_size(width: int, height: int, side: int) -> tuple[int, int]:
    """The (width, height) the CPU way shrinks a JPEG to: libjpeg's DCT scaling (Pillow's draft) to 1/2, 1/4 or
    1/8 while both sides stay at least `side`, then an integer reduce until the shorter side is below 2 * side."""
    scale = 1
    for candidate in (8, 4, 2):
        if min(width // candidate, height // candidate) >= side:
            scale = candidate
            break
    width, height = -(-width // scale), -(-height // scale)
    factor = min(width, height) // side
    if factor >= 2:
        width, height = -(-width // factor), -(-height // factor)
    return width, height


def _upright(torch: Any, pixels: Any, orientation: int | None) -> Any:
    """A (3, H, W) tensor turned as EXIF orientations 2..8 say (as images._TRANSPOSE does with Pillow)."""
    if orientation == 2:
        return pixels.flip(2)
    if orientation == 3:
        return pixels.flip(1).flip(2)
    if orientation == 4:
        return pixels.flip(1)
    if orientation == 5:
        return pixels.transpose(1, 2)
    if orientation == 6:
        return torch.rot90(pixels, -1, (1, 2))
    if orientation == 7:
        return pixels.transpose(1, 2).flip(1).flip(2)
    if orientation == 8:
        return torch.rot90(pixels, 1, (1, 2))
    return pixels


def decode_pixels(headers: Sequence[Header], device: str, side: int) -> list[Image.Image | None]:
    """Each JPEG decoded on `device` in one batch, shrunk to the working side and turned upright there, back as a
    small RGB image; None where the decoder refused the file (the CPU way takes it)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not headers:
        return []
    out: list[Image.Image | None] = []
    for start in range(0, len(headers), DECODE_CHUNK):
        chunk = headers[start : start + DECODE_CHUNK]
        out.extend(_shrunk(torch, chunk, _decode_all(decode_jpeg, ImageReadMode.RGB, torch, chunk, device), side))
    return out


def _decode_all(decode_jpeg: Any, mode: Any, torch: Any, headers: Sequence[Header], device: str) -> list[Any]:
    inputs = [torch.frombuffer(bytearray(h.data), dtype=torch.uint8) for h in headers]
    try:
        return list(decode_jpeg(inputs, mode=mode, device=device))
    except RuntimeError:  # one bad file fails the batch: decode them one by one, keeping what decodes
        decoded: list[Any] = []
        for one in inputs:
            try:
                decoded.append(decode_jpeg(one, mode=mode, device=device))
            except RuntimeError:
                decoded.append(None)
        return decoded


def _shrunk(torch: Any, headers: Sequence[Header], decoded: list[Any], side: int) -> list[Image.Image | None]:
    out: list[Image.Image | None] = []
    for header, pixels in zip(headers, decoded, strict=True):
        if pixels is None or tuple(pixels.shape[1:]) != (header.record.height, header.record.width):
            out.append(None)
            continue
        width, height = working_size(header.record.width, header.record.height, side)
        if (width, height) != (header.record.width, header.record.height):
            small = torch.nn.functional.interpolate(
                pixels.unsqueeze(0).float(), size=(height, width), mode="bilinear", antialias=True
            )[0]
            pixels = small.round_().clamp_(0, 255).to(torch.uint8)
        pixels = _upright(torch, pixels, header.orientation)
        out.append(Image.fromarray(pixels.permute(1, 2, 0).contiguous().cpu().numpy(), "RGB"))
    return out


def finish(header: Header, pixels: Image.Image) -> Decoded:
    """The record completed from the shrunk pixels: thumbnail and perceptual hash, as the CPU way makes them."""
    thumbnail, thumbnail_size = make_thumbnail(pixels)
    record = replace(
        header.record, thumbnail=thumbnail, thumbnail_size=thumbnail_size, dhash=perceptual_hash(thumbnail)
    )
    return Decoded(record, pixels)


def submit_batch(
    pool: ThreadPoolExecutor,
    paths: Sequence[Path],
    device: str,
    *,
    keep_gps: bool,
    keep_identifying: bool,
    min_side: int,
    take: Callable[[Path], bool],
    on_cpu: Callable[[Path], T],
    prepare: Callable[[Path, Decoded], T],
) -> list[Future[T]]:
    """One batch through the pool: headers in parallel, then the batch's GPU decode, then each file finished in
    parallel (`prepare`, given its Decoded), or `on_cpu` for a file the GPU does not take (nor one `take`
    refuses, which is not even read: the CPU way says why). Each task waits only
    on tasks submitted before it, which the pool (first in, first out) has started, so a pool of one thread
    cannot deadlock."""
    side = decode_limits(min_side).working_side

    def header(path: Path) -> Header | None:
        return read_header(path, keep_gps=keep_gps, keep_identifying=keep_identifying) if take(path) else None

    headers = [pool.submit(header, p) for p in paths]

    def on_device() -> list[Image.Image | None]:
        found = [f.result() for f in headers]
        taken = [h for h in found if h is not None]
        pixels = iter(decode_pixels(taken, device, side))
        return [next(pixels) if h is not None else None for h in found]

    batch = pool.submit(on_device)

    def one(i: int, path: Path) -> T:
        header = headers[i].result()
        try:
            pixels = batch.result()[i]
        except Exception:  # noqa: BLE001 - the device failed (out of memory, a driver error): the CPU takes it
            pixels = None
        if header is None or pixels is None:
            return on_cpu(path)
        return prepare(path, finish(header, pixels))

    return [pool.submit(one, i, p) for i, p in enumerate(paths)]
