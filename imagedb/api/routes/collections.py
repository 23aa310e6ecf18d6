"""The collections, with their models and counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter

from imagedb.api.deps import Stores
from imagedb.api.schemas import CollectionInfo

router = APIRouter()


@router.get("/collections", response_model=list[CollectionInfo])
def collections(store: Stores) -> list[dict[str, Any]]:
    with store() as s:
        stats = s.admin.collection_stats()
    # A checkpoint's path is the server's business: clients see its file name only.
    return [
        {**c, "pretrained": Path(c["pretrained"]).name if "/" in c["pretrained"] else c["pretrained"]} for c in stats
    ]
