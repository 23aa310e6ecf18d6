"""The database a command uses: an explicit URL, IMAGEDB_DATABASE_URL, or the embedded server's; connected and
at the current schema."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
from pgvector.psycopg import register_vector

from imagedb import config
from imagedb.errors import ImagedbError, InvalidInput, SchemaOutOfDate
from imagedb.pg.cluster import postmaster
from imagedb.pg.connection import INTERNAL_SCHEMA, connect, in_recovery
from imagedb.pg.embedded import EMBEDDED_DBNAME, embedded_url, owner_url
from imagedb.pg.migrate import current_revision, head_revision, upgrade


def resolve_url(explicit: str | None, home: str | Path | None = None) -> str:
    """The URL to use: an explicit one, IMAGEDB_DATABASE_URL, or the embedded server's."""
    return config.database_url(explicit, home) or embedded_url(config.home(home))


def live_url(explicit: str | None, home: str | Path | None = None) -> str | Callable[[], str]:
    """What a long-running process (`imagedb serve`'s pool) connects with, asked again for each new connection.

    An external URL is used as it is. The embedded server's socket is read afresh: `imagedb db listen` restarts the
    server on another port, which moves its socket. Nothing here starts a stopped server: `imagedb db stop` meant
    it, and connections fail until `imagedb db start` (or any command) starts it.
    """
    external = config.database_url(explicit, home)
    if external:
        return external
    folder = config.home(home)
    started = embedded_url(folder)

    def current() -> str:
        info = postmaster(folder / "pgdata")
        return started if info is None else owner_url(folder, info.socket_dir, info.port, EMBEDDED_DBNAME)

    return current


def open_connection(explicit_url: str | None = None, home: str | Path | None = None) -> psycopg.Connection:
    """A connection to a database whose schema is current.

    The embedded database is migrated on the spot; an external one that is behind is refused with a message,
    since migrating someone's server is their decision.
    """
    external = config.database_url(explicit_url, home)
    url = external or embedded_url(config.home(home))
    conn = connect(url)
    head, current = head_revision(), current_revision(conn)
    if current != head:
        if in_recovery(conn):  # a replica: it cannot be migrated, it follows its primary
            conn.close()
            raise SchemaOutOfDate(
                f"this database is a read-only replica at schema revision {current or 'none'}, imagedb needs {head}:"
                " run `imagedb db upgrade` on its primary, and the replica follows"
            )
        if external:
            outsider = current is None and _schema_closed_to(conn)
            conn.close()
            if outsider:
                raise InvalidInput(
                    "this login may not read imagedb's tables (a reader from `imagedb grant-reader` searches in SQL,"
                    " through the views and functions of docs/sql.md): give imagedb's commands the owner's URL or a"
                    " writer's"
                )
            raise SchemaOutOfDate(
                f"the database schema is at revision {current or 'none'}, imagedb needs {head}:"
                " run `imagedb db upgrade`"
            )
        try:
            upgrade(url)
        except ImagedbError:
            conn.close()
            raise
    register_vector(conn)
    return conn


def _schema_closed_to(conn: psycopg.Connection) -> bool:
    """Whether imagedb's tables are there but this login may not use their schema (a reader's)."""
    row = conn.execute(
        "SELECT to_regnamespace(%(s)s) IS NOT NULL AND NOT has_schema_privilege(%(s)s, 'USAGE')",
        {"s": INTERNAL_SCHEMA},
    ).fetchone()
    return bool(row and row[0])
