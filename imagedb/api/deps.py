"""The dependencies routes declare: the application's state, a store, the embedding slots, the API token.

They are coroutines because none of them blocks: FastAPI would run plain functions on its thread pool, a thread
hop each per request.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from imagedb.api.guards import token_matches
from imagedb.api.state import ApiState, Embedding
from imagedb.store import Store

StoreOpener = Callable[[], AbstractContextManager[Store]]


async def app_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.imagedb
    return state


AppState = Annotated[ApiState, Depends(app_state)]


async def store_opener(state: AppState) -> StoreOpener:
    # An opener, not an open store: a search gives its connection back while it embeds, and an original streams
    # for as long as the client reads, neither holding a pooled connection meanwhile.
    return state.database.store


Stores = Annotated[StoreOpener, Depends(store_opener)]


async def embedding(state: AppState) -> Embedding:
    return state.embedding


Embeddings = Annotated[Embedding, Depends(embedding)]


async def authorised(state: AppState, authorization: Annotated[str | None, Header()] = None) -> None:
    """Nothing without a token; with one, `Authorization: Bearer TOKEN` or 401. guards.BearerToken checks the same
    before any body is read; this one keeps each route safe under another stack and names the header in OpenAPI."""
    if state.token is None:
        return
    if not token_matches(authorization, state.token):
        raise HTTPException(
            401, "missing or wrong token: send Authorization: Bearer TOKEN", headers={"WWW-Authenticate": "Bearer"}
        )
