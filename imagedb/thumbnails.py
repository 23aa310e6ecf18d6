"""Thumbnails, as stored with each image, and the perceptual hash taken from them."""

from __future__ import annotations

import io

from PIL import Image

THUMBNAIL_SIZE = 256


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
