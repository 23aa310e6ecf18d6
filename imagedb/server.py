"""`imagedb serve`: a JSON API (with its OpenAPI schema) and a single page, from one process.

The model loads once per process (embed.load caches it); requests run concurrently in FastAPI's thread pool,
each with a connection from a small pool. Paths from requests never reach the filesystem: originals are served
only for paths stored in the database.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi import Path as FastAPIPath
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

from imagedb import db
from imagedb.attributes import parse_pairs
from imagedb.config import DEFAULT_COLLECTION
from imagedb.errors import DatabaseUnavailable, ImagedbError, InvalidInput, ModelMismatch, ModelUnavailable, NotFound
from imagedb.query import Term, parse_string
from imagedb.search import MAX_LIMIT, search
from imagedb.store import Filters, Store

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_ID = 2**63 - 1
_STATUS = {NotFound: 404, InvalidInput: 400, ModelMismatch: 409, ModelUnavailable: 503, DatabaseUnavailable: 503}


class SearchHit(BaseModel):
    rank: int
    score: float
    id: int
    path: str
    date: datetime
    thumbnail: str


class SearchResponse(BaseModel):
    results: list[SearchHit]


class ImageInfo(BaseModel):
    id: int
    collection: str
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
    attributes: dict[str, Any]
    ingested_at: datetime


class CollectionInfo(BaseModel):
    collection: str
    model: str
    pretrained: str
    dim: int
    images: int
    embeddings: int
    errors: int


def filters(
    after: datetime | None = None,
    before: datetime | None = None,
    camera: str | None = None,
    format: str | None = None,
    min_width: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    min_height: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    path: str | None = None,
    attr: Annotated[list[str], Query(description="KEY=VALUE, repeatable")] = [],  # noqa: B006
) -> Filters:
    return Filters(
        after=after,
        before=before,
        camera=camera,
        format=format,
        min_width=min_width,
        min_height=min_height,
        path=path,
        attributes=tuple(parse_pairs(attr).items()),
    )


class Page(BaseModel):
    """Which results: collection, how many, from where, at least how good, in which order."""

    collection: str = DEFAULT_COLLECTION
    limit: int = 24
    offset: int = 0
    min_score: float | None = None
    sort: Literal["score", "date"] = "score"


def page(
    collection: str = DEFAULT_COLLECTION,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 24,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    min_score: Annotated[float | None, Query(ge=-1, le=1)] = None,
    sort: Literal["score", "date"] = "score",
) -> Page:
    return Page(collection=collection, limit=limit, offset=offset, min_score=min_score, sort=sort)


def create_app(database_url: str | None = None, home: str | Path | None = None, token: str | None = None) -> FastAPI:
    """The application; `token`, when set, is required as `Authorization: Bearer TOKEN` on every API route."""
    db.open_connection(database_url, home).close()  # migrates the embedded database, checks an external one
    url = db.resolve_url(database_url, home)
    pool = ConnectionPool(
        url, min_size=1, max_size=8, kwargs={"autocommit": True}, configure=register_vector, open=False
    )
    opened = threading.Lock()

    @contextmanager
    def store() -> Iterator[Store]:
        with opened:  # opened on first use, so that any ASGI runner works, lifespan events or not
            if pool.closed:
                pool.open()
        with pool.connection() as conn:
            yield Store(conn)

    def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401, "missing or wrong token: send Authorization: Bearer TOKEN", headers={"WWW-Authenticate": "Bearer"}
            )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        pool.close()

    # No Swagger UI or ReDoc: they load from a CDN. The schema itself is at /openapi.json.
    app = FastAPI(title="imagedb", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    api = APIRouter(prefix="/api", dependencies=[Depends(authorised)])

    @app.exception_handler(ImagedbError)
    async def library_error(request: Request, exc: ImagedbError) -> JSONResponse:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    def run(terms: list[Term], p: Page, f: Filters) -> SearchResponse:
        with store() as s:
            results = search(
                s,
                terms,
                collection=p.collection,
                limit=p.limit,
                offset=p.offset,
                filters=f,
                min_score=p.min_score,
                sort=p.sort,
            )
        return SearchResponse(
            results=[
                SearchHit(
                    rank=r.rank,
                    score=r.score,
                    id=r.image_id,
                    path=r.path,
                    date=r.date,
                    thumbnail=f"/api/images/{r.image_id}/thumbnail",
                )
                for r in results
            ]
        )

    @api.get("/search", response_model=SearchResponse)
    def search_text(
        q: Annotated[str, Query(min_length=1, max_length=2000, description="the query language of `imagedb search`")],
        p: Annotated[Page, Depends(page)],
        f: Annotated[Filters, Depends(filters)],
    ) -> SearchResponse:
        """Search with a query: texts, id:N, + and -, weights. Image paths are refused, unread: upload instead."""
        return run(parse_string(q.replace("\x00", ""), files=False), p, f)

    @api.post("/search/image", response_model=SearchResponse)
    def search_image(
        file: Annotated[UploadFile, File(description=f"an image, at most {MAX_UPLOAD_BYTES // 2**20} MB")],
        p: Annotated[Page, Depends(page)],
        f: Annotated[Filters, Depends(filters)],
        q: Annotated[str | None, Form(max_length=2000)] = None,
    ) -> SearchResponse:
        """Search by an uploaded image, optionally combined with a query (added to it)."""
        data = file.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
        terms = parse_string(q.replace("\x00", ""), files=False) if q else []
        with tempfile.TemporaryDirectory(prefix="imagedb-upload-") as folder:
            upload = Path(folder) / "upload"
            upload.write_bytes(data)
            return run([*terms, Term("image", str(upload), 1.0)], p, f)

    @api.get("/images/{image_id}", response_model=ImageInfo)
    def image(image_id: Annotated[int, FastAPIPath(ge=1, le=MAX_ID)]) -> dict[str, Any]:
        with store() as s:
            found = s.image_details(image_id)
        if found is None:
            raise NotFound(f"no image with id {image_id}")
        return found

    @api.get("/images/{image_id}/thumbnail", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(image_id: Annotated[int, FastAPIPath(ge=1, le=MAX_ID)]) -> Response:
        with store() as s:
            jpeg = s.thumbnail(image_id)
        if jpeg is None:
            raise NotFound(f"no thumbnail for image {image_id}")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @api.get("/images/{image_id}/original", response_class=FileResponse)
    def original(image_id: Annotated[int, FastAPIPath(ge=1, le=MAX_ID)]) -> FileResponse:
        """The original file, if it is still where it was ingested from (only paths stored in the database)."""
        with store() as s:
            stored = s.image_path(image_id)
        if stored is None or not os.path.isfile(stored):
            raise NotFound(f"the original of image {image_id} is not readable any more")
        return FileResponse(stored)

    @api.get("/images/{image_id}/similar", response_model=SearchResponse)
    def similar(
        image_id: Annotated[int, FastAPIPath(ge=1, le=MAX_ID)],
        p: Annotated[Page, Depends(page)],
        f: Annotated[Filters, Depends(filters)],
    ) -> SearchResponse:
        with store() as s:
            found = s.image_details(image_id)
        if found is None:
            raise NotFound(f"no image with id {image_id}")
        p = p.model_copy(update={"collection": found["collection"]})
        return run([Term("id", str(image_id), 1.0)], p, f)

    @api.get("/collections", response_model=list[CollectionInfo])
    def collections() -> list[dict[str, Any]]:
        with store() as s:
            return s.collection_stats()

    app.include_router(api)
    web = resources.files("imagedb") / "web"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse((web / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(web)), name="static")
    return app
