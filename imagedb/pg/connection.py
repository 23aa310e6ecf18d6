"""Connections to PostgreSQL: autocommit, one-line failures, and the checks a pool runs."""

from __future__ import annotations

import os

import psycopg
from psycopg.conninfo import conninfo_to_dict

from imagedb.errors import DatabaseUnavailable, InvalidInput
from imagedb.pg.limits import set_lock_timeout

# imagedb's tables live in a schema readers have no USAGE on (migration 0014), its views and SQL functions in public;
# imagedb's own sessions find both, and create tables in the first, without relying on the database's setting.
INTERNAL_SCHEMA = "imagedb_internal"
SEARCH_PATH = f"{INTERNAL_SCHEMA},public"


def session_options(url: str) -> str:
    """libpq's `options` for imagedb's sessions: the URL's own (else PGOPTIONS's, as libpq would take; it is gone
    from the environment of a process on the embedded server), then imagedb's search_path."""
    given = str(conninfo_to_dict(url).get("options") or os.environ.get("PGOPTIONS") or "")
    return f"{given} -c search_path={SEARCH_PATH}".strip()


def connect(url: str) -> psycopg.Connection:
    """An autocommit connection: every write the store makes is in an explicit transaction (store/base.py). Its lock
    waits end after pg/limits.py's LOCK_TIMEOUT_S, so that no command waits forever behind another session."""
    try:
        conn = psycopg.connect(url, connect_timeout=10, autocommit=True, options=session_options(url))
        set_lock_timeout(conn)
        return conn
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to the database: {_connect_failure(exc)}. Is the server running, and is the URL right?"
        ) from exc
    except psycopg.ProgrammingError as exc:  # libpq could not parse it
        raise InvalidInput(
            f"not a database URL ({str(exc).strip()}): give postgresql://USER@HOST:PORT/DATABASE"
        ) from exc


def _connect_failure(exc: psycopg.OperationalError) -> str:
    """The line of libpq's message that names the server and the cause. Its last line is often a hint ("Is the
    server running locally...?"), said better by the caller; with several addresses tried (localhost: ::1, then
    127.0.0.1), the last attempt's line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(("Is the server running", "Multiple connection attempts"))]
    return (causes or lines or [type(exc).__name__])[-1].removeprefix("- ")


def check_pooled(conn: psycopg.Connection) -> None:
    """Raise unless a pooled connection is still usable (the pool then replaces it): alive, and reading the
    vector types it registered (register_vector) under the ids the database has now. `imagedb db restore`
    recreates the vector extension, so a connection from before it would send and read vectors under the old
    ids, and its prepared plans fail ("cached plan must not change result type"). One round trip, as the
    pool's own check."""
    registered = conn.adapters.types.get("halfvec")
    row = conn.execute("SELECT to_regtype('halfvec')::oid").fetchone()
    if registered is None or row is None or row[0] != registered.oid:
        conn.close()  # the pool discards a closed connection; an open one it would hand out again
        raise psycopg.OperationalError("the database's vector types changed (a restore?): a new connection is needed")


def in_recovery(conn: psycopg.Connection) -> bool:
    """Whether the server is a standby (a read-only replica replaying its primary's changes)."""
    return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])  # type: ignore[index]


def sqlalchemy_url(url: str) -> str:
    """SQLAlchemy needs the driver named in the scheme; psycopg (3) is the one installed."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
