"""The embedded server: started (or found running) under IMAGEDB_HOME, with every login needing a password.

Every login to the embedded server needs a password (initdb's `trust` would let anyone who reaches the socket in
as superuser, with any password). The owner's password is generated once and kept in a libpq password file in
IMAGEDB_HOME, readable by the OS user who owns that folder alone; the URL names the file, never the secret.
pg_hba.conf is written by listen.hba_text: local lines only, plus TCP lines once `imagedb db listen` is on.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql

from imagedb.errors import DatabaseUnavailable, InvalidInput, first_line
from imagedb.pg.cluster import (
    LOG_DIRECTORY,
    OWNER_ROLE,
    folders_above_kept_unlisted,
    log_reason,
    pgserver,
    postmaster,
    record_written,
    stop,
    unwritten,
)
from imagedb.pg.environment import ignore_libpq_environment
from imagedb.pg.listen import (
    HBA_MARKER,
    Listen,
    apply_listen,
    check_address_free,
    hba_text,
    install_certificate,
    load_listen,
    restart_for_certificate,
    running_listen,
    save_listen,
    start_if_stopped,
    tls_supported,
)
from imagedb.pg.standby import REPLICA_FILE, follow_primary, registered

EMBEDDED_DBNAME = "imagedb"
PASSFILE = "pgpass"
_SHELL_SPECIAL = '"$`\\'


def embedded_url(home: Path, database: str = EMBEDDED_DBNAME) -> str:
    """Start (or find running) the embedded PostgreSQL under `home`, and return the imagedb database's URL."""
    ignore_libpq_environment()  # before any connection or pg_ctl: a PGPASSWORD left in the shell is not the owner's
    # pg_ctl starts the server through /bin/sh with the data directory in double quotes, where these characters
    # mean something else: such a home could be initialised but never started.
    if unusable := sorted(set(str(home)) & set(_SHELL_SPECIAL)):
        raise InvalidInput(
            f"the folder {str(home)!r} holds {' '.join(unusable)}, which PostgreSQL's pg_ctl cannot pass through its"
            ' shell: choose an IMAGEDB_HOME (or --home) without " $ ` or \\'
        )
    wheel = pgserver()
    pgdata = home / "pgdata"
    try:
        home.mkdir(parents=True, exist_ok=True)
        # pgserver makes the data directory (initdb; as root, the permissions its `pgserver` user needs); imagedb
        # starts the server itself, which then runs on after this process exits, for the next command.
        server = wheel.get_server(pgdata, cleanup_mode=None, start=False)
        with server._lock, folders_above_kept_unlisted(pgdata):  # two first commands at once: one initdb
            server.ensure_pgdata_inited()
        start_if_stopped(home)  # on the persisted TCP address, if `db listen` set one
        info = postmaster(pgdata)
        if info is None:
            reason = log_reason(pgdata) or f"see {pgdata / 'log'}"
            raise DatabaseUnavailable(f"the embedded server in {pgdata} stopped as soon as it started: {reason}")
        _require_passwords(home, info.socket_dir, info.port, hba_text(load_listen(home)))
        info = apply_listen(home)  # restart on the persisted address if the server runs otherwise
        url = owner_url(home, info.socket_dir, info.port, "postgres")
        with psycopg.connect(url, autocommit=True) as conn:
            harden_server(conn, pgdata)
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                except psycopg.errors.DuplicateDatabase:
                    pass  # another imagedb command created it a moment ago
        if (home / REPLICA_FILE).exists():  # a replica imagedb made: follow its primary's socket if it moved
            follow_primary(home, url)
        return owner_url(home, info.socket_dir, info.port, database)
    except (DatabaseUnavailable, InvalidInput):
        raise
    except psycopg.OperationalError as exc:
        if postmaster(pgdata) is None:
            raise DatabaseUnavailable(f"the embedded server in {pgdata} stopped: {first_line(exc)}") from exc
        # Running, but no connection: every slot taken (clients that connect and never log in hold one each until
        # authentication_timeout), or the server shutting down.
        raise DatabaseUnavailable(
            f"the embedded server in {pgdata} is running but refused imagedb's connection: {first_line(exc)};"
            f" try again in a few seconds, and see {pgdata / LOG_DIRECTORY} for the clients connecting"
        ) from exc
    except Exception as exc:  # the wheel raises bare RuntimeError/CalledProcessError/OSError
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {home}: {first_line(exc)}"
            f" (see {pgdata / 'log'}, or set IMAGEDB_DATABASE_URL to use another server)"
        ) from exc


def owner_url(home: Path, socket_dir: object, port: int | None, database: str) -> str:
    params = {"host": str(socket_dir), "passfile": str(home / PASSFILE)}
    if port and port != 5432:  # the socket is named after the port: .s.PGSQL.PORT
        params["port"] = str(port)
    query = urlencode(params, quote_via=quote)
    return f"postgresql://{OWNER_ROLE}@/{quote(database, safe='')}?{query}"


def _require_passwords(home: Path, socket_dir: object, port: int | None, wanted_hba: str) -> None:
    """Once per home: give the owner a generated password, then make the server ask every login for one.
    Later, rewrite pg_hba.conf when the listen setting changed what it must say (and reload it)."""
    import fcntl

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
            with psycopg.connect(owner_url(home, socket_dir, port, "postgres"), autocommit=True) as conn:
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


# What the CIS PostgreSQL benchmark asks of the log: every connection, and a prefix naming the client's address,
# so that a failed login (FATAL: password authentication failed) says where it came from (docs/security.md). The
# address comes before anything the client chooses (its user and application names). The bundled server has no
# auth_delay module.
# authentication_timeout: a client that connects and never answers the password request holds a server slot this
# long (PostgreSQL's default is a minute: 130 such clients kept every login out, the owner's too).
# max_notify_queue_pages: the NOTIFY queue's bound on disk (pgdata/pg_notify; 8 kB pages), 128 MB instead of 8 GB.
# Any login may NOTIFY, and a listener idle in an open transaction keeps all of it; imagedb's own notifications are
# hints that a full queue does not fail (imagedb/store/notify.py). PostgreSQL 17 and later; from the next start.
SERVER_SETTINGS = {
    "log_connections": "on",
    "log_line_prefix": "%m [%p] client=%h user=%u db=%d app=%a ",
    "authentication_timeout": "10s",
    "max_notify_queue_pages": "16384",
}


def harden_server(conn: psycopg.Connection, pgdata: Path) -> None:
    """Once per data directory and setting (cluster.unwritten: an operator's own choice, or RESET, stays): the
    settings above by ALTER SYSTEM, then a reload; and, the first time, no login but the owner's into the server's
    own databases, where imagedb's revokes (pg/limits.py) do not reach: a reader there could create large objects
    and temporary tables."""
    missing = unwritten(pgdata, SERVER_SETTINGS)
    if not missing:
        return
    known = {row[0] for row in conn.execute("SELECT name FROM pg_settings WHERE name = ANY(%s)", (list(missing),))}
    try:
        if "log_line_prefix" in missing:
            conn.execute("REVOKE CONNECT ON DATABASE postgres, template1 FROM PUBLIC")
        for name, value in missing.items():
            if name in known:  # max_notify_queue_pages is new in PostgreSQL 17
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")
    except psycopg.errors.ReadOnlySqlTransaction:
        return  # a replica: it has its primary's settings and catalogs
    record_written(pgdata, list(missing))


def set_listen(home: Path, listen: Listen | None, cert: Path | None = None, key: Path | None = None) -> Listen | None:
    """Persist a new TCP address (None: socket only) and restart the embedded server on it. If the server cannot
    start there, the previous setting is put back and the server restarted on it, so the database stays reachable."""
    if (cert is None) != (key is None):
        raise InvalidInput("give --cert and --key together")
    pgdata = home / "pgdata"
    embedded_url(home)  # running, with passwords required, before any TCP opens
    previous = load_listen(home)
    info = postmaster(pgdata)
    running = running_listen(pgdata, info)[0] if info is not None else None
    if listen is not None and listen != running:
        check_address_free(listen)
    if ((listen is not None and not listen.loopback) or cert is not None) and not tls_supported():
        raise InvalidInput(
            "the bundled PostgreSQL is built without TLS, and passwords and rows would cross the network in the"
            f" clear: listen on 127.0.0.1:{listen.port if listen else 5433} and reach it through an SSH tunnel"
            " (ssh -L PORT:127.0.0.1:PORT HOST), or use a server with TLS through IMAGEDB_DATABASE_URL"
        )
    if cert is not None and key is not None:
        install_certificate(pgdata, cert, key)
        if listen is not None and listen == running and not listen.loopback:
            restart_for_certificate(pgdata, listen, info)
    save_listen(home, listen)
    try:
        embedded_url(home)
    except DatabaseUnavailable as exc:
        save_listen(home, previous)
        embedded_url(home)  # back as it was; if even that fails, its own message says why
        reason = str(exc).split(" (free the address")[0]
        raise DatabaseUnavailable(f"{reason}; the server listens as before ({previous or 'Unix socket only'})") from exc
    _tell_replicas(home)
    return listen


def _tell_replicas(home: Path) -> None:
    """The socket is named after the port, so a new port moves it: running replicas are pointed at it."""
    for folder in registered(home):
        if postmaster(folder / "pgdata") is not None:
            embedded_url(folder)  # follows the primary (replica.follow_primary)


def stop_embedded(home: Path) -> bool:
    """Stop the embedded server under `home`; False when none was running."""
    ignore_libpq_environment()
    return stop(home / "pgdata")


def running_url(home: Path, database: str = "postgres") -> tuple[Any, str] | None:
    """The running embedded server's postmaster info and the owner's URL of `database` on it, or None when it is
    not running. Starts nothing: `imagedb db status` must not bring up a server someone stopped."""
    ignore_libpq_environment()
    info = postmaster(home / "pgdata")
    if info is None:
        return None
    return info, owner_url(home, info.socket_dir, info.port, database)
