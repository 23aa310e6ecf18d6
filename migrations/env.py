"""Alembic environment. imagedb runs it with an open connection (imagedb.pg.migrate.upgrade); `alembic upgrade head`
from a checkout uses IMAGEDB_DATABASE_URL, or sqlalchemy.url in alembic.ini."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from imagedb.pg.connection import session_options, sqlalchemy_url
from imagedb.pg.database import resolve_url
from imagedb.schema import metadata
from imagedb.store.index import HNSW_INDEX_PREFIX

# Two imagedb processes may start on a fresh embedded database at once: one migrates, the other waits.
MIGRATION_LOCK_KEY = 0x1A6EDB


def include_object(obj, name, type_, reflected, compare_to) -> bool:  # type: ignore[no-untyped-def]
    # Per-model HNSW indexes are created at run time, not by migrations.
    return not (type_ == "index" and name is not None and name.startswith(HNSW_INDEX_PREFIX))


def run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=metadata, include_object=include_object)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.config.get_main_option("sqlalchemy.url") or resolve_url(None)
    with create_engine(sqlalchemy_url(url), connect_args={"options": session_options(url)}).connect() as conn:
        run(conn)
