"""One stored image: its details, its thumbnail, its original file."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response
from fastapi import Path as FastAPIPath

from imagedb.api import originals
from imagedb.api.deps import Stores
from imagedb.api.schemas import ImageInfo
from imagedb.errors import NotFound
from imagedb.request import MAX_ID

router = APIRouter()


@router.get("/images/{image_id}", response_model=ImageInfo)
def image(store: Stores, image_id: Annotated[int, FastAPIPath(ge=1, le=MAX_ID)]) -> dict[str, Any]:
    with store() as s:
        found = s.images.image_details(image_id)
    if found is None:
        raise NotFound(f"no image with id {image_id}")
    return found


@router.get("/images/{image_id}/thumbnail", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def thumbnail(store: Stores, image_id: Annotated[int, FastAPIPath(ge=1, le=MAX_ID)]) -> Response:
    with store() as s:
        jpeg = s.images.thumbnail(image_id)
    if jpeg is None:
        raise NotFound(f"no thumbnail for image {image_id}")
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.get(
    "/images/{image_id}/original",
    response_class=Response,
    responses={200: {"content": {t: {} for t in sorted(set(originals.CONTENT_TYPES.values()))}}},
)
def original(store: Stores, image_id: Annotated[int, FastAPIPath(ge=1, le=MAX_ID)]) -> Response:
    """The original file, only while it is the file that was ingested (same size, mtime and SHA-256):
    404 when it is gone, 409 when it changed. Served as the image type of its stored format."""
    with store() as s:
        row = s.images.image_details(image_id)
    if row is None:
        raise NotFound(f"no image with id {image_id}")
    return originals.response(image_id, row)
