"""Read replicas of the embedded server: streaming standbys made with pg_basebackup over the primary's Unix
socket, each with its own replication slot and its own replication role (not a superuser), so one replica can be
revoked alone. The replica's folder is an IMAGEDB_HOME of its own: `imagedb --home DIR search ...` reads there.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from imagedb.errors import DatabaseUnavailable, InvalidInput, ReadOnlyReplica
from imagedb.pg import standby
from imagedb.pg.cluster import LOG_DIRECTORY, postmaster, program, stop
from imagedb.pg.connection import connect
from imagedb.pg.embedded import PASSFILE, embedded_url
from imagedb.pg.environment import clean_environment
from imagedb.pg.standby import REPLICA_FILE, read_meta, register, slot_name

WAL_SIZE = re.compile(r"[1-9]\d{0,8}(kB|MB|GB|TB)")
DEFAULT_MAX_WAL = "1GB"
# Copied with the data directory but belonging to the primary's running process (pgserver's handle list, the
# socket lock naming the primary's pid, its log): the standby refuses to start beside a foreign lock file.
_NOT_COPIED = (".handle_pids.json", "log", "postmaster.pid", "postmaster.opts")


@dataclass(frozen=True)
class Replica:
    home: Path
    slot: str
    receiver: str | None  # the standby's WAL receiver: "streaming" once it follows the primary


def create(primary_home: Path, target: Path, *, max_wal: str = DEFAULT_MAX_WAL) -> Replica:
    """Make a streaming standby of the embedded server of `primary_home` in `target`, and start it."""
    primary_home, target = primary_home.expanduser().resolve(), target.expanduser().resolve()
    _check_target(primary_home, target)
    if not WAL_SIZE.fullmatch(max_wal):
        raise InvalidInput(f"not a size: {max_wal!r} (e.g. 512MB, 1GB, 20GB)")
    slot, password = slot_name(target), secrets.token_urlsafe(32)
    with connect(embedded_url(primary_home)) as conn:
        if standby.primary_of_standby(conn) is not None:
            raise InvalidInput(f"the server in {primary_home} is itself a replica: make replicas of its primary")
        standby.limit_slot_wal(conn, max_wal)
        standby.drop_replication(conn, slot)  # left by a replica of this folder deleted without `db replica remove`
        standby.create_replication_role(conn, slot, password)
    info = postmaster(primary_home / "pgdata")
    if info is None:
        raise DatabaseUnavailable(f"the embedded server in {primary_home} stopped while making the replica")
    made = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
        _base_backup(info, slot, password, target / "pgdata")
        _make_standby(target / "pgdata", info, slot, password)
        _copy_private(primary_home / PASSFILE, target / PASSFILE)
        (target / REPLICA_FILE).write_text(json.dumps({"primary_home": str(primary_home), "slot": slot}) + "\n")
        register(primary_home, target, add=True)
        embedded_url(target)  # starts the standby (a data directory there already: started as it is)
    except BaseException:
        _undo(primary_home, target, slot, made)
        raise
    return Replica(target, slot, _wait_streaming(target))


def remove(primary_home: Path, target: Path) -> bool:
    """Stop the replica in `target` and drop its slot and role on the primary (its files stay)."""

    target = target.expanduser().resolve()
    meta = read_meta(target)
    slot = meta["slot"] if meta else slot_name(target)
    if (target / "pgdata" / "standby.signal").exists():
        stop(target / "pgdata")
    primary_home = primary_home.expanduser().resolve()
    with connect(embedded_url(primary_home)) as conn:
        found = standby.drop_replication(conn, slot)
    register(primary_home, target, add=False)
    return found


def require_primary(conn: psycopg.Connection, home: Path | None = None) -> None:
    """Refuse a write on a replica in one line that names its primary (checked once, before any work)."""
    primary = standby.primary_of_standby(conn)
    if primary is None:
        return
    meta = read_meta(home) if home is not None else None
    hint = f" (imagedb --home {meta['primary_home']} ...)" if meta and meta.get("primary_home") else ""
    raise ReadOnlyReplica(
        f"this database is a read-only replica of {primary}: run write commands on the primary{hint};"
        " the replica follows it"
    )


def _check_target(primary_home: Path, target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise InvalidInput(f"{target} is not a folder: give a new or empty folder for the replica")
    if target.is_dir() and any(target.iterdir()):
        raise InvalidInput(f"{target} exists and is not empty: give a new or empty folder for the replica")
    if target == primary_home or primary_home in target.parents or target in primary_home.parents:
        raise InvalidInput(f"{target} overlaps the primary's folder {primary_home}: give a folder outside it")


def _base_backup(info: Any, slot: str, password: str, pgdata: Path) -> None:
    """pg_basebackup over the primary's socket as the replica's role; WAL streamed alongside (-X stream), the
    slot created first (-C) so no WAL the replica needs is recycled before it connects."""

    conninfo = psycopg.conninfo.make_conninfo(
        host=str(info.socket_dir),
        port=str(info.port or 5432),
        user=slot,
        application_name=slot,
    )
    done = subprocess.run(
        [program("pg_basebackup"), "-d", conninfo, "-D", str(pgdata), "-X", "stream", "-C", "-S", slot,
         "-c", "fast", "--no-password"],
        capture_output=True, text=True, env={**clean_environment(), "PGPASSWORD": password},  # not on the command line
    )  # fmt: skip
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise DatabaseUnavailable(f"pg_basebackup failed: {lines[-1] if lines else done.returncode}")


def _make_standby(pgdata: Path, info: Any, slot: str, password: str) -> None:
    for name in _NOT_COPIED:
        (pgdata / name).unlink(missing_ok=True)
    shutil.rmtree(pgdata / LOG_DIRECTORY, ignore_errors=True)  # the primary's log: the standby writes its own
    for lock in pgdata.glob(".s.PGSQL.*"):
        lock.unlink()
    conninfo = psycopg.conninfo.make_conninfo(
        host=str(info.socket_dir), port=str(info.port or 5432),
        user=slot, password=password, application_name=slot,
    )  # fmt: skip
    with open(pgdata / "postgresql.auto.conf", "a") as conf:
        # The data directory is readable by the server's user alone, like the data itself; the password only
        # lets this role stream WAL, which the replica holds a copy of anyway.
        conf.write(f"primary_conninfo = {_guc_string(conninfo)}\n")
        conf.write(f"primary_slot_name = {_guc_string(slot)}\n")
        # Replica readers are not cancelled when the primary vacuums rows they still see (forget's VACUUM).
        conf.write("hot_standby_feedback = on\n")
    (pgdata / "standby.signal").touch()
    if os.geteuid() == 0:  # pg_basebackup ran as us; the server runs as pgserver's user
        import pwd

        user = pwd.getpwnam("pgserver")
        for path in [pgdata, *pgdata.rglob("*")]:
            os.lchown(path, user.pw_uid, user.pw_gid)


def _guc_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _copy_private(source: Path, destination: Path) -> None:
    descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(source.read_text())


def _wait_streaming(target: Path, seconds: float = 10.0) -> str | None:

    with connect(embedded_url(target)) as conn:
        deadline = time.monotonic() + seconds
        while True:
            receiver = standby.standby_status(conn)["receiver"]
            if receiver == "streaming" or time.monotonic() > deadline:
                return receiver
            time.sleep(0.05)


def _undo(primary_home: Path, target: Path, slot: str, made: bool) -> None:
    """A failed create leaves no half-made standby, slot or role behind."""

    try:
        if postmaster(target / "pgdata") is not None:
            stop(target / "pgdata")
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass
    shutil.rmtree(target / "pgdata", ignore_errors=True)
    for name in (PASSFILE, REPLICA_FILE, ".auth.lock"):
        (target / name).unlink(missing_ok=True)
    if made:
        shutil.rmtree(target, ignore_errors=True)
    try:
        with connect(embedded_url(primary_home)) as conn:
            standby.drop_replication(conn, slot)
    except Exception:  # noqa: BLE001
        pass
