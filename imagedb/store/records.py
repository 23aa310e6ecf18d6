"""The plain values the store takes and returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Collection:
    id: int
    name: str
    model_id: int
    model_name: str
    pretrained: str
    dim: int
    # Set by `imagedb db reindex --quantize binary --rerank N`: searches read the model's binary-quantised HNSW
    # index for N candidates and re-rank them exactly on the stored halfvec. None: the halfvec index alone.
    rerank: int | None = None


@dataclass(frozen=True)
class ImageRecord:
    """One decoded file, ready to store (see images.decode)."""

    path: str
    sha256: str
    size_bytes: int
    mtime: datetime
    width: int
    height: int
    format: str
    taken_at: datetime | None
    camera_make: str | None
    camera_model: str | None
    orientation: int | None
    exif: dict[str, Any]
    thumbnail: bytes
    thumbnail_size: tuple[int, int]
    dhash: str | None = None  # 64 characters of 0 and 1


@dataclass(frozen=True)
class Hit:
    image_id: int
    path: str
    score: float
    date: datetime  # when taken, else the file's time


@dataclass(frozen=True)
class Filters:
    """Metadata conditions a search result must meet; every value reaches SQL as a bound parameter."""

    after: datetime | None = None  # taken_at (or file time) on or after
    before: datetime | None = None  # ... strictly before
    camera: str | None = None  # substring of "make model", any case
    format: str | None = None  # JPEG, PNG, ...
    min_width: int | None = None
    min_height: int | None = None
    path: str | None = None  # glob: * any characters, ? one character
    attributes: tuple[tuple[str, str], ...] = ()  # user attribute key = value (as text)
