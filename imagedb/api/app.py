"""The FastAPI application: routes over the library, with bounded work and a database that may come and go.

Requests run in FastAPI's thread pool. A search takes a pooled connection to check itself and read stored
vectors, gives it back while the model embeds (at most `embedding_slots` at once, the costly part in CPU and
memory), and takes one again for the index query.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import psycopg
from fastapi import APIRouter, Depends, FastAPI, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi import Path as FastAPIPath
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool, PoolTimeout

from imagedb import search as searching
from imagedb.api import guards, originals
from imagedb.api.originals import OriginalChanged
from imagedb.api.schemas import (
    CollectionInfo,
    ImageInfo,
    Page,
    Problem,
    SearchHit,
    SearchResponse,
    filters,
    page,
)
from imagedb.errors import (
    ConcurrentChange,
    DatabaseUnavailable,
    ImagedbError,
    InvalidInput,
    ModelMismatch,
    ModelUnavailable,
    NotFound,
)
from imagedb.pg.connection import check_pooled
from imagedb.pg.database import live_url, open_connection
from imagedb.query import Term, parse_string
from imagedb.store import Filters, Store

log = logging.getLogger("imagedb.api")

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_FORM_OVERHEAD = 64 * 1024  # multipart boundaries, headers and the q field around the file
MAX_OTHER_BODY = 64 * 1024  # no other route reads a body
MAX_ID = 2**63 - 1
SHOWN_INPUT_CHARS = 100  # of a rejected value, in a 422 answer
POOL_TIMEOUT_S = 3.0  # how long a request waits for a database connection before a 503
RETRY_AFTER_S = "5"
_STATUS = {
    NotFound: 404,
    InvalidInput: 400,
    ModelMismatch: 409,
    ConcurrentChange: 409,
    OriginalChanged: 409,
    ModelUnavailable: 503,
    DatabaseUnavailable: 503,
}
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": Problem} for code in (400, 401, 404, 409, 413, 421, 503)}


def _upload_limit(path: str) -> tuple[int, str]:
    if path == "/api/search/image":
        return MAX_UPLOAD_BYTES + MAX_FORM_OVERHEAD, f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MB"
    return MAX_OTHER_BODY, f"a request body here is at most {MAX_OTHER_BODY // 1024} KB"


def create_app(
    database_url: str | None = None,
    home: str | Path | None = None,
    token: str | None = None,
    *,
    embedding_slots: int = 2,
    embedding_wait_s: float = 5.0,
    pool_size: int = 8,
) -> FastAPI:
    """The application; `token`, when set, is required as `Authorization: Bearer TOKEN` on every API route.

    Without a token only loopback Host names are served. At most `embedding_slots` requests decode and embed at
    once; one that waits longer than `embedding_wait_s` for a slot gets 503 with Retry-After.
    """
    if token is not None and not token.strip():
        raise InvalidInput("the API token cannot be empty")
    open_connection(database_url, home).close()  # migrates the embedded database, checks an external one
    pool = ConnectionPool(
        live_url(database_url, home),  # follows the embedded server's socket when `db listen` moves it
        min_size=1,
        max_size=pool_size,
        kwargs={"connect_timeout": 3, "autocommit": True},  # the store's transaction discipline (store/base.py)
        configure=register_vector,
        check=check_pooled,  # a connection broken by a restart, or from before a restore, is replaced
        timeout=POOL_TIMEOUT_S,
        reconnect_timeout=2 * POOL_TIMEOUT_S,  # give up a retry cycle soon: the next request starts a fresh one
        open=False,
    )
    opened = threading.Lock()
    slots = threading.BoundedSemaphore(embedding_slots)
    embedders = ThreadPoolExecutor(embedding_slots, thread_name_prefix="imagedb-embed")

    @contextmanager
    def store() -> Iterator[Store]:
        with opened:  # opened on first use, so that any ASGI runner works, lifespan events or not
            if pool.closed:
                pool.open()
        with pool.connection() as conn:
            yield Store(conn)

    @contextmanager
    def embedding_slot() -> Iterator[None]:
        if not slots.acquire(timeout=embedding_wait_s):
            raise HTTPException(
                503,
                f"busy: {embedding_slots} searches are being embedded already; retry in a moment",
                headers={"Retry-After": "2"},
            )
        try:
            yield
        finally:
            slots.release()

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
        embedders.shutdown(wait=False)

    # No Swagger UI or ReDoc: they load from a CDN. The schema itself is at /openapi.json.
    app = FastAPI(title="imagedb", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.embedding_slots = slots
    app.state.pool = pool
    api = APIRouter(prefix="/api", dependencies=[Depends(authorised)], responses=_ERRORS)
    _error_handlers(app)

    def run(terms: list[Term], p: Page, f: Filters, upload: Path | None = None) -> SearchResponse:
        with store() as s:
            plan = searching.plan(s, p.request(terms, f))
        vector = _embedded(plan, upload)
        with store() as s:
            results = searching.nearest(s, plan, vector)
        hits = [
            SearchHit(rank=r.rank, score=r.score, relevance=r.relevance, duplicates=r.others, id=r.image_id,
                      path=r.path, date=r.date, thumbnail=f"/api/images/{r.image_id}/thumbnail")
            for r in results
        ]  # fmt: skip
        return SearchResponse(results=hits)

    def _embedded(plan: searching.Plan, upload: Path | None) -> np.ndarray:
        """The query vector, computed holding no database connection and (for texts and images) a slot."""
        if not plan.needs_model:
            return searching.query_vector(plan)
        searching.load_model(plan)  # once per process, outside the slots: a second model must not wait behind it
        try:
            with embedding_slot():
                # On the slots' own threads: the allocator keeps freed memory in per-thread arenas, so decodes
                # spread over the request threads kept 5.5 GB resident for 2 at a time, these threads 2.7 GB.
                return embedders.submit(searching.query_vector, plan).result()
        except ImagedbError as exc:
            if upload is None or str(upload) not in str(exc):
                raise
            # The upload's temporary path means nothing to the client and tells it about the server.
            raise type(exc)(str(exc).replace(str(upload), "the upload")) from exc

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
        terms = parse_string(q.replace("\x00", ""), files=False) if q else []
        with tempfile.TemporaryDirectory(prefix="imagedb-upload-") as folder:
            upload = Path(folder) / "upload"
            with upload.open("wb") as out:
                shutil.copyfileobj(file.file, out, 2**20)
            if upload.stat().st_size > MAX_UPLOAD_BYTES:
                raise HTTPException(413, f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
            return run([*terms, Term("image", str(upload), 1.0)], p, f, upload)

    @api.get("/images/{image_id}", response_model=ImageInfo)
    def image(image_id: Annotated[int, FastAPIPath(ge=1, le=MAX_ID)]) -> dict[str, Any]:
        with store() as s:
            found = s.images.image_details(image_id)
        if found is None:
            raise NotFound(f"no image with id {image_id}")
        return found

    @api.get("/images/{image_id}/thumbnail", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(image_id: Annotated[int, FastAPIPath(ge=1, le=MAX_ID)]) -> Response:
        with store() as s:
            jpeg = s.images.thumbnail(image_id)
        if jpeg is None:
            raise NotFound(f"no thumbnail for image {image_id}")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @api.get(
        "/images/{image_id}/original",
        response_class=Response,
        responses={200: {"content": {t: {} for t in sorted(set(originals.CONTENT_TYPES.values()))}}},
    )
    def original(image_id: Annotated[int, FastAPIPath(ge=1, le=MAX_ID)]) -> Response:
        """The original file, only while it is the file that was ingested (same size, mtime and SHA-256):
        404 when it is gone, 409 when it changed. Served as the image type of its stored format."""
        with store() as s:
            row = s.images.image_details(image_id)
        if row is None:
            raise NotFound(f"no image with id {image_id}")
        return originals.response(image_id, row)

    @api.get("/images/{image_id}/similar", response_model=SearchResponse)
    def similar(
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

    @api.get("/collections", response_model=list[CollectionInfo])
    def collections() -> list[dict[str, Any]]:
        with store() as s:
            stats = s.admin.collection_stats()
        # A checkpoint's path is the server's business: clients see its file name only.
        return [
            {**c, "pretrained": Path(c["pretrained"]).name if "/" in c["pretrained"] else c["pretrained"]}
            for c in stats
        ]

    app.include_router(api)
    web = resources.files("imagedb") / "web"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse((web / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(web)), name="static")
    # Added innermost first: the body limit sees the request first after the Host check; the headers go on
    # every answer, the middlewares' own included.
    app.add_middleware(guards.BodyLimit, limit_for=_upload_limit)
    if token is None:
        app.add_middleware(guards.LoopbackHostOnly)
    app.add_middleware(guards.SameOriginOnly)
    app.add_middleware(guards.AccessLog)
    app.add_middleware(guards.SecurityHeaders)
    return app


def _error_handlers(app: FastAPI) -> None:
    """Library errors keep their one-line message; what could reveal the server's files or setup does not."""

    @app.exception_handler(ImagedbError)
    async def library_error(request: Request, exc: ImagedbError) -> JSONResponse:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
        detail = str(exc)
        if isinstance(exc, ModelUnavailable):  # its message names checkpoint paths and cache folders
            log.error("model unavailable: %s", exc, exc_info=exc)
            detail = "model unavailable: the server cannot load the collection's model (see the server's log)"
        elif status >= 500:
            log.error("%s: %s", type(exc).__name__, exc, exc_info=exc)
        headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer, but a bad value is shown by its start: whole, a 2 MB form field came back whole.
        errors = [{**e, "input": _clipped(e["input"])} if "input" in e else e for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(psycopg.OperationalError)
    async def database_gone(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        # PoolTimeout is one too: no working connection within POOL_TIMEOUT_S. The full text (socket paths,
        # host names) goes to the log only.
        log.error("database unavailable: %s", exc, exc_info=exc)
        reason = (
            f"no connection within {POOL_TIMEOUT_S:g} s" if isinstance(exc, PoolTimeout) else "the connection was lost"
        )
        return JSONResponse(
            {"detail": f"database unavailable: {reason}; retry in a few seconds"},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_S},
        )


def _clipped(value: object, keep: int = SHOWN_INPUT_CHARS) -> object:
    """A rejected value as a 422 answer shows it: short ones as sent, long texts by their start and length, long
    others (a list, a file's bytes) by the start of their text."""
    text = value if isinstance(value, str) else None
    if text is None:
        if len(shown := repr(value)) <= keep:
            return value
        text = shown
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text):,} characters)"


def _shown_weights(pretrained: str) -> str:
    return Path(pretrained).name if "/" in pretrained else pretrained
