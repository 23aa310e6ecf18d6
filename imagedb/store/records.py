"""The plain values the store takes and returns."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

# Declared with the rest of a search (request.py), where each filter carries its SQL; the store takes it.
from imagedb.request import Filters as Filters

# A DICOM frame's row has its own path: its file's, then `#frame=N`. Any other `#frame=` is part of a file's name
# (`a.png#frame=1.png` is not a frame of `a.png`).
FRAME_MARK = "#frame="
_FRAME_SUFFIX = re.compile(r"#frame=[1-9][0-9]*\Z")
# The file a stored path names, in SQL; {} is the path's expression.
FILE_OF_SQL = "regexp_replace({}, '#frame=[1-9][0-9]*$', '')"


def frame_path(path: str, frame: int) -> str:
    """The path of a multi-frame file's frame (1-based)."""
    return f"{path}{FRAME_MARK}{frame}"


def file_of(path: str) -> str:
    """The file a stored path names: a frame's file, else the path itself (as FILE_OF_SQL)."""
    return _FRAME_SUFFIX.sub("", path)


@dataclass(frozen=True)
class Collection:
    id: int
    name: str
    model_id: int
    model_name: str
    pretrained: str
    dim: int
    keep_phi: bool = False  # created with --keep-phi: DICOM headers may be stored whole
    # Set by `imagedb db reindex --quantize binary --rerank N`: searches read the model's binary-quantised HNSW
    # index for N candidates and re-rank them exactly on the stored halfvec. None: the halfvec index alone.
    rerank: int | None = None


@dataclass(frozen=True)
class DicomInfo:
    """What is stored of a DICOM file's header (see imagedb.dicom). The UIDs are raw here, in memory only: the
    store writes their keyed hashes."""

    modality: str | None
    body_part: str | None
    study_uid: str | None
    series_uid: str | None
    instance_uid: str | None
    study_year: int | None
    study_date: date | None  # only with --keep-dates
    frame: int  # 1-based frame number of a multi-frame file (1 for single-frame files)
    frames: int
    header: dict[str, Any]  # the kept fields (imagedb.dicom.KEPT_FIELDS), or the whole header with --keep-phi


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
    dicom: DicomInfo | None = None


@dataclass(frozen=True)
class Hit:
    image_id: int
    path: str
    score: float
    date: datetime  # when taken, else the file's time
    others: int = 0  # with collapsed duplicates: how many other images of its duplicate group were left out


@dataclass(frozen=True)
class ModelRecord:
    """A registered model and where its weights came from (None: registered before provenance was recorded)."""

    id: int
    name: str
    pretrained: str
    dim: int
    checkpoint_sha256: str | None = None
    checkpoint_bytes: int | None = None


@dataclass(frozen=True)
class HeldModel:
    """A model a collection holds, as `imagedb models list` shows it."""

    collection: str
    collection_id: int
    model: ModelRecord
    searched: bool  # the collection's search model
    ready: bool  # every image had its vector when `models add` finished (always, for the search model)
    vectors: int
    images: int
    index: str  # "valid", "building" (an invalid or missing index while vectors exist) or "none"
    registered_at: datetime
    open_clip_version: str | None
    torch_version: str | None
    preprocess: dict[str, Any] | None
    tokenizer: str | None
