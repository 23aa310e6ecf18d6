"""The schema's migrations (alembic, in migrations/ at the repository root, shipped inside the package)."""

from __future__ import annotations

from pathlib import Path

import psycopg

from imagedb.errors import DatabaseUnavailable, LockTimeout, SchemaOutOfDate, first_line
from imagedb.pg.connection import connect, session_options, sqlalchemy_url
from imagedb.pg.limits import LOCK_TIMEOUT_S, blocker_line

_PACKAGE = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = _PACKAGE / "migrations"
if not MIGRATIONS_DIR.is_dir():  # a checkout (installed editable or on PYTHONPATH): migrations/ sits beside imagedb/
    MIGRATIONS_DIR = _PACKAGE.parent / "migrations"


def alembic_config():  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: psycopg.Connection) -> str | None:
    if conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None:  # type: ignore[index]
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def upgrade(url: str) -> None:
    """Migrate the database at `url` to the newest schema; any failure is one line saying what to do."""
    from alembic import command
    from alembic.util import CommandError
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError, OperationalError

    cfg = alembic_config()
    engine = create_engine(sqlalchemy_url(url), connect_args={"options": session_options(url)})
    try:
        with engine.begin() as conn:
            # As every connection of imagedb's (pg/limits.py): a migration behind a held table ends, naming it.
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        if isinstance(exc.orig, psycopg.errors.LockNotAvailable):
            with connect(url) as conn:
                raise LockTimeout(blocker_line(conn)) from exc
        raise DatabaseUnavailable(f"cannot migrate the database: {first_line(exc.orig or exc)}") from exc
    except DBAPIError as exc:
        raise SchemaOutOfDate(_migration_failure(exc.orig or exc, url)) from exc
    except CommandError as exc:  # alembic_version names a revision these migrations do not have
        raise SchemaOutOfDate(
            f"cannot migrate the database: {first_line(exc)}. It was written by a newer imagedb, or its"
            " alembic_version table was changed by hand: use a newer imagedb, or restore a backup"
        ) from exc
    except Exception as exc:
        raise SchemaOutOfDate(f"cannot migrate the database: {first_line(exc)}") from exc
    finally:
        engine.dispose()


def _migration_failure(exc: BaseException, url: str) -> str:
    text = first_line(exc)
    database = psycopg.conninfo.conninfo_to_dict(url).get("dbname", "imagedb")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege) and "extension" in text:
        # pgvector is not a trusted extension: only a superuser may create it, once per database.
        return (
            f"this role may not create the pgvector extension ({text}): a superuser must run"
            f" `CREATE EXTENSION vector;` in the database {database} once, then rerun `imagedb db upgrade`"
        )
    if isinstance(exc, (psycopg.errors.UndefinedFile, psycopg.errors.FeatureNotSupported)) and "vector" in text:
        return f"the server has no pgvector ({text}): install pgvector >= 0.8 on it, then rerun `imagedb db upgrade`"
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return f"this role may not change the schema ({text}): run `imagedb db upgrade` as the database's owner"
    return f"cannot migrate the database: {text}"
