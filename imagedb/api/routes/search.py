"""Searches: by a query, by an uploaded image, by a stored image."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile
from fastapi import Path as FastAPIPath

from imagedb import search
from imagedb.api.deps import Embeddings, StoreOpener, Stores
from imagedb.api.limits import MAX_UPLOAD_BYTES
from imagedb.api.schemas import Page, SearchHit, SearchResponse, filters, page
from imagedb.api.state import Embedding
from imagedb.errors import NotFound
from imagedb.query import parse_string
from imagedb.request import LOWER_IS_BETTER, MAX_ID, Term
from imagedb.store import Filters

router = APIRouter()


@dataclass(frozen=True)
class Search:
    """Runs a search on a pooled connection that it gives back while the model embeds (at most as many at once
    as there are embedding slots), then takes one again for the index query."""

    store: StoreOpener
    embedding: Embedding

    def __call__(self, terms: list[Term], p: Page, f: Filters, upload: Path | None = None) -> SearchResponse:
        with self.store() as s:
            plan = search.plan(s, p.request(terms, f))
        vector = self.embedding.vector(plan, upload)
        with self.store() as s:
            results = search.nearest(s, plan, vector)
        hits = [
            SearchHit(rank=r.rank, score=r.score, relevance=r.relevance, duplicates=r.others, id=r.image_id,
                      path=r.path, date=r.date, thumbnail=f"/api/images/{r.image_id}/thumbnail",
                      vector_rank=r.vector_rank, keyword_rank=r.keyword_rank, keyword_score=r.keyword_score,
                      matched=list(r.matched))
            for r in results
        ]  # fmt: skip
        metric = plan.request.metric
        return SearchResponse(results=hits, metric=metric, higher_is_better=metric not in LOWER_IS_BETTER)


async def searcher(store: Stores, embedding: Embeddings) -> Search:
    return Search(store, embedding)


Run = Annotated[Search, Depends(searcher)]


@router.get("/search", response_model=SearchResponse)
def search_text(
    run: Run,
    q: Annotated[str, Query(min_length=1, max_length=2000, description="the query language of `imagedb search`")],
    p: Annotated[Page, Depends(page)],
    f: Annotated[Filters, Depends(filters)],
) -> SearchResponse:
    """Search with a query: texts, id:N, + and -, weights. Image paths are refused, unread: upload instead."""
    return run(parse_string(q.replace("\x00", ""), files=False), p, f)


@router.post("/search/image", response_model=SearchResponse)
def search_image(
    run: Run,
    file: Annotated[UploadFile, File(description=f"an image, at most {MAX_UPLOAD_BYTES // 2**20} MB")],
    p: Annotated[Page, Depends(page)],
    f: Annotated[Filters, Depends(filters)],
    q: Annotated[str | None, Form(max_length=2000)] = None,
) -> SearchResponse:
    """Search by an uploaded image, optionally combined with a query (added to it)."""
    terms = parse_string(q.replace("\x00", ""), files=False) if q else []
    with tempfile.TemporaryDirectory(prefix="imagedb-upload-") as folder:
        upload = Path(folder) / "upload"
        with upload.open("wb") as out:
            shutil.copyfileobj(file.file, out, 2**20)
        if upload.stat().st_size > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
        return run([*terms, Term("image", str(upload), 1.0)], p, f, upload)


@router.get("/images/{image_id}/similar", response_model=SearchResponse)
def similar(
    store: Stores,
    run: Run,
    image_id: Annotated[int, FastAPIPath(ge=1, le=MAX_ID)],
    p: Annotated[Page, Depends(page)],
    f: Annotated[Filters, Depends(filters)],
) -> SearchResponse:
    """Images most like a stored one, in its own collection, itself left out (as `imagedb search --like N`
    and imagedb_similar() leave it out)."""
    with store() as s:
        found = s.images.image_details(image_id)
    if found is None:
        raise NotFound(f"no image with id {image_id}")
    p = p.model_copy(update={"collection": found["collection"]})
    return run([Term("id", str(image_id), 1.0)], p, f)
