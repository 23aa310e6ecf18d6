"""Read replicas of the embedded server: streaming standbys made with pg_basebackup over the primary's Unix
socket, each with its own replication slot and its own replication role (not a superuser), so one replica can be
revoked alone. The replica's folder is an IMAGEDB_HOME of its own: `imagedb --home DIR search ...` reads there.
"""

from __future__ import annotations

import hashlib
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

from imagedb import server_admin
from imagedb.errors import DatabaseUnavailable, InvalidInput, ReadOnlyReplica

REPLICA_FILE = "replica.json"
SLOT_PREFIX = "imagedb_replica_"
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


def slot_name(target: Path) -> str:
    """One slot (and replication role) per replica folder, named after its path."""
    return SLOT_PREFIX + hashlib.sha256(str(target).encode()).hexdigest()[:12]


def create(primary_home: Path, target: Path, *, max_wal: str = DEFAULT_MAX_WAL) -> Replica:
    """Make a streaming standby of the embedded server of `primary_home` in `target`, and start it."""
    from imagedb.db import connect, embedded_url
    from imagedb.store import Store

    primary_home, target = primary_home.expanduser().resolve(), target.expanduser().resolve()
    _check_target(primary_home, target)
    if not WAL_SIZE.fullmatch(max_wal):
        raise InvalidInput(f"not a size: {max_wal!r} (e.g. 512MB, 1GB, 20GB)")
    slot, password = slot_name(target), secrets.token_urlsafe(32)
    with Store(connect(embedded_url(primary_home))) as store:
        if store.primary_of_standby() is not None:
            raise InvalidInput(f"the server in {primary_home} is itself a replica: make replicas of its primary")
        store.limit_slot_wal(max_wal)
        store.drop_replication(slot)  # left by a replica of this folder deleted without `db replica remove`
        store.create_replication_role(slot, password)
    info = server_admin.postmaster(primary_home / "pgdata")
    if info is None:
        raise DatabaseUnavailable(f"the embedded server in {primary_home} stopped while making the replica")
    made = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
        _base_backup(info, slot, password, target / "pgdata")
        _make_standby(target / "pgdata", info, slot, password)
        _copy_private(primary_home / "pgpass", target / "pgpass")
        (target / REPLICA_FILE).write_text(json.dumps({"primary_home": str(primary_home), "slot": slot}) + "\n")
        _register(primary_home, target, add=True)
        embedded_url(target)  # starts the standby (pgserver finds a data directory and starts it as it is)
    except BaseException:
        _undo(primary_home, target, slot, made)
        raise
    return Replica(target, slot, _wait_streaming(target))


def remove(primary_home: Path, target: Path) -> bool:
    """Stop the replica in `target` and drop its slot and role on the primary (its files stay)."""
    from imagedb.db import connect, embedded_url, stop_embedded
    from imagedb.store import Store

    target = target.expanduser().resolve()
    meta = read_meta(target)
    slot = meta["slot"] if meta else slot_name(target)
    if (target / "pgdata" / "standby.signal").exists():
        stop_embedded(target)
    primary_home = primary_home.expanduser().resolve()
    with Store(connect(embedded_url(primary_home))) as store:
        found = store.drop_replication(slot)
    _register(primary_home, target, add=False)
    return found


REGISTRY_FILE = "replicas.json"


def _register(primary_home: Path, target: Path, *, add: bool) -> None:
    """The primary's list of its replicas' folders, so a change of its socket can be passed on to them."""
    known = registered(primary_home)
    known = [k for k in known if k != target] + ([target] if add else [])
    (primary_home / REGISTRY_FILE).write_text(json.dumps([str(k) for k in known]) + "\n")


def registered(primary_home: Path) -> list[Path]:
    try:
        return [Path(p) for p in json.loads((primary_home / REGISTRY_FILE).read_text())]
    except (OSError, ValueError, TypeError):
        return []


def follow_primary(home: Path, owner_url: str) -> None:
    """On a replica imagedb made: if its primary now listens on another socket or port (after `imagedb db
    listen`), point the replica there. A stopped primary is left alone: the replica keeps serving reads."""
    from imagedb.db import connect
    from imagedb.store import Store

    meta = read_meta(home)
    info = server_admin.postmaster(Path(meta["primary_home"]) / "pgdata") if meta else None
    if info is None or not (home / "pgdata" / "standby.signal").exists():
        return
    with Store(connect(owner_url)) as store:
        store.repoint_standby(str(info.socket_dir), str(info.port or 5432))


def read_meta(home: Path) -> dict[str, str] | None:
    try:
        data = json.loads((home / REPLICA_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def require_primary(store: object, home: Path | None = None) -> None:
    """Refuse a write on a replica in one line that names its primary (checked once, before any work)."""
    primary = store.primary_of_standby()
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
    from imagedb.db import _postgres_program

    conninfo = psycopg.conninfo.make_conninfo(
        host=str(info.socket_dir),
        port=str(info.port or 5432),
        user=slot,
        application_name=slot,
    )
    done = subprocess.run(
        [_postgres_program("pg_basebackup"), "-d", conninfo, "-D", str(pgdata), "-X", "stream", "-C", "-S", slot,
         "-c", "fast", "--no-password"],
        capture_output=True, text=True, env={**os.environ, "PGPASSWORD": password},  # not on the command line
    )  # fmt: skip
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise DatabaseUnavailable(f"pg_basebackup failed: {lines[-1] if lines else done.returncode}")


def _make_standby(pgdata: Path, info: Any, slot: str, password: str) -> None:
    for name in _NOT_COPIED:
        (pgdata / name).unlink(missing_ok=True)
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
    from imagedb.db import connect, embedded_url
    from imagedb.store import Store

    with Store(connect(embedded_url(target))) as store:
        deadline = time.monotonic() + seconds
        while True:
            receiver = store.standby_status()["receiver"]
            if receiver == "streaming" or time.monotonic() > deadline:
                return receiver
            time.sleep(0.05)


def _undo(primary_home: Path, target: Path, slot: str, made: bool) -> None:
    """A failed create leaves no half-made standby, slot or role behind."""
    from imagedb.db import connect, embedded_url, stop_embedded
    from imagedb.store import Store

    try:
        if server_admin.postmaster(target / "pgdata") is not None:
            stop_embedded(target)
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass
    shutil.rmtree(target / "pgdata", ignore_errors=True)
    for name in ("pgpass", REPLICA_FILE, ".auth.lock"):
        (target / name).unlink(missing_ok=True)
    if made:
        shutil.rmtree(target, ignore_errors=True)
    try:
        with Store(connect(embedded_url(primary_home))) as store:
            store.drop_replication(slot)
    except Exception:  # noqa: BLE001
        pass
