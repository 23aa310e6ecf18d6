"""The FastAPI application, assembled: its state, the routers under /api behind the token check, the page, the
error handlers and the middlewares.

Routes are plain functions, so requests run in FastAPI's thread pool; what bounds their work (the database pool,
the embedding slots) is in state.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI

from imagedb.api import guards, handlers
from imagedb.api.deps import authorised
from imagedb.api.limits import upload_limit
from imagedb.api.routes import browse, collections, docs, images, page, search
from imagedb.api.state import ApiState, Database, Embedding
from imagedb.errors import InvalidInput


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.imagedb.close()


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
    state = ApiState(Database(database_url, home, pool_size), Embedding(embedding_slots, embedding_wait_s), token)

    # FastAPI's own /docs loads Swagger UI from a CDN: routes/docs.py serves it from the package instead.
    app = FastAPI(title="imagedb", version="0.1.0", docs_url=None, redoc_url=None, lifespan=_lifespan)
    app.state.imagedb = state
    handlers.install(app)
    api = APIRouter(prefix="/api", dependencies=[Depends(authorised)], responses=handlers.ERROR_RESPONSES)
    for resource in (search, images, collections, browse):
        api.include_router(resource.router)
    app.include_router(api)
    app.include_router(page.router)
    app.include_router(docs.router)
    app.mount("/static", page.static_files(), name="static")
    # Added innermost first: the body limit sees the request first after the Host or token check; the headers go on
    # every answer, the middlewares' own included.
    app.add_middleware(guards.BodyLimit, limit_for=upload_limit)
    if token is None:
        app.add_middleware(guards.LoopbackHostOnly)
    else:  # before the body limit too: a client without the token is told 401, not how large an upload may be
        app.add_middleware(guards.BearerToken, token=token)
    app.add_middleware(guards.SameOriginOnly)
    app.add_middleware(guards.AccessLog)
    app.add_middleware(guards.SecurityHeaders)
    return app
