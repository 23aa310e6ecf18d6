"""What the application holds while it runs: the database pool, the embedding slots, the API token.

One `ApiState` per application, on `app.state.imagedb`; routes reach it through the dependencies in deps.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
from fastapi import HTTPException
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool

from imagedb import config
from imagedb.api.limits import POOL_TIMEOUT_S
from imagedb.errors import ImagedbError
from imagedb.pg.connection import check_pooled, session_options
from imagedb.pg.database import live_url, open_connection
from imagedb.pg.limits import set_lock_timeout
from imagedb.search import Plan, load_model, query_vector
from imagedb.store import Store


def _configure(conn: psycopg.Connection) -> None:
    """A new pooled connection: the vector types, and lock waits that end (pg/limits.py), as the CLI's."""
    register_vector(conn)
    set_lock_timeout(conn)


class Database:
    """A pool of connections to the database, opened on first use so that any ASGI runner works, lifespan events
    or not."""

    def __init__(self, database_url: str | None, home: str | Path | None, pool_size: int) -> None:
        open_connection(database_url, home).close()  # migrates the embedded database, checks an external one
        self.pool = ConnectionPool(
            live_url(database_url, home),  # follows the embedded server's socket when `db listen` moves it
            min_size=1,
            max_size=pool_size,
            # autocommit: the store's transaction discipline (store/base.py); options: imagedb's search_path
            kwargs={
                "connect_timeout": 3,
                "autocommit": True,
                "options": session_options(config.database_url(database_url) or ""),
            },
            configure=_configure,
            check=check_pooled,  # a connection broken by a restart, or from before a restore, is replaced
            timeout=POOL_TIMEOUT_S,
            reconnect_timeout=2 * POOL_TIMEOUT_S,  # give up a retry cycle soon: the next request starts a fresh one
            open=False,
        )
        self._opened = threading.Lock()

    @contextmanager
    def store(self) -> Iterator[Store]:
        """A store on a pooled connection, given back when the block ends."""
        with self._opened:
            if self.pool.closed:
                self.pool.open()
        with self.pool.connection() as conn:
            yield Store(conn)

    def close(self) -> None:
        self.pool.close()


class Embedding:
    """At most `slots` queries decoded and embedded at once (the costly part in CPU and memory); a request that
    waits longer than `wait_s` for a slot gets 503 with Retry-After."""

    def __init__(self, slots: int, wait_s: float) -> None:
        self.size = slots
        self.wait_s = wait_s
        self.slots = threading.BoundedSemaphore(slots)
        self.threads = ThreadPoolExecutor(slots, thread_name_prefix="imagedb-embed")

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self.slots.acquire(timeout=self.wait_s):
            raise HTTPException(
                503,
                f"busy: {self.size} searches are being embedded already; retry in a moment",
                headers={"Retry-After": "2"},
            )
        try:
            yield
        finally:
            self.slots.release()

    def vector(self, plan: Plan, upload: Path | None) -> np.ndarray:
        """The query vector, computed holding no database connection and (for texts and images) a slot."""
        if not plan.needs_model:
            return query_vector(plan)
        load_model(plan)  # once per process, outside the slots: a second model must not wait behind it
        try:
            with self.slot():
                # On the slots' own threads: the allocator keeps freed memory in per-thread arenas, so decodes
                # spread over the request threads kept 5.5 GB resident for 2 at a time, these threads 2.7 GB.
                return self.threads.submit(query_vector, plan).result()
        except ImagedbError as exc:
            if upload is None or str(upload) not in str(exc):
                raise
            # The upload's temporary path means nothing to the client and tells it about the server.
            raise type(exc)(str(exc).replace(str(upload), "the upload")) from exc

    def close(self) -> None:
        self.threads.shutdown(wait=False)


@dataclass(frozen=True)
class ApiState:
    database: Database
    embedding: Embedding
    token: str | None  # None: no Authorization asked, and only loopback Host names served

    def close(self) -> None:
        self.database.close()
        self.embedding.close()
