"""Original files, served only while they are the very file that was ingested.

The stored path is only where the file was: it may since be a symlink to /etc/shadow, a FIFO, or another file
(a writer role can even change the path). So the file is opened once, without blocking, checked to be a regular
file of the stored size and mtime, and its bytes hashed; what is served is what was hashed, from the same
descriptor.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from datetime import datetime
from typing import Any, BinaryIO

from fastapi.responses import Response, StreamingResponse

from imagedb.errors import ImagedbError, NotFound
from imagedb.files import file_mtime

# Pillow's format names for what ingest stores; anything else is offered as a download, never rendered.
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",  # a JPEG with extra frames, as some cameras write
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
IN_MEMORY_BYTES = 32 * 2**20  # up to this, read whole and hash exactly what is sent
CHUNK = 2**20
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


class OriginalChanged(ImagedbError):
    """The file at the stored path is not the one that was ingested."""

    exit_code = 1
    http_status = 409


def response(image_id: int, row: dict[str, Any]) -> Response:
    """The original of the image described by `row` (image_details), if it is still the ingested file."""
    path, sha256 = row["path"], row["sha256"]
    changed = OriginalChanged(
        f"the file of image {image_id} changed since it was ingested: run imagedb ingest on it again"
    )
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # do not even open a FIFO or a device
            raise changed
        fd = os.open(path, _FLAGS)
    except FileNotFoundError as exc:
        raise NotFound(f"the original of image {image_id} is not readable any more: the file is gone") from exc
    except OSError as exc:
        raise NotFound(f"the original of image {image_id} is not readable any more: {exc.strerror}") from exc
    file = os.fdopen(fd, "rb")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not _same_file(info, row["size_bytes"], row["mtime"]):
            raise changed
        headers = _headers(image_id, row["format"])
        if info.st_size <= IN_MEMORY_BYTES:
            data = file.read(info.st_size + 1)
            if hashlib.sha256(data).hexdigest() != sha256:
                raise changed
            file.close()
            return Response(data, media_type=headers.pop("content-type"), headers=headers)
        if _hash(file, info.st_size) != sha256:
            raise changed
        file.seek(0)
    except BaseException:
        file.close()
        raise
    return StreamingResponse(_chunks(file, info.st_size), media_type=headers.pop("content-type"), headers=headers)


def _same_file(info: os.stat_result, size: int, mtime: datetime) -> bool:
    return info.st_size == size and file_mtime(info) == mtime


def _headers(image_id: int, fmt: str) -> dict[str, str]:
    known = CONTENT_TYPES.get(fmt.upper())
    if known:
        return {"content-type": known, "cache-control": "no-store"}
    return {
        "content-type": "application/octet-stream",
        "content-disposition": f'attachment; filename="image-{image_id}"',
        "cache-control": "no-store",
    }


def _hash(file: BinaryIO, size: int) -> str:
    digest = hashlib.sha256()
    left = size + 1  # one byte more than stored tells a file that grew
    while left > 0 and (chunk := file.read(min(CHUNK, left))):
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def _chunks(file: BinaryIO, size: int) -> Iterator[bytes]:
    with file:
        left = size
        while left > 0 and (chunk := file.read(min(CHUNK, left))):
            left -= len(chunk)
            yield chunk
