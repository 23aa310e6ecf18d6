"""A standby's side of replication and the primary's record of its standbys: the replica's metadata file, the
primary's list of replica folders, and the server-level SQL of streaming replication (slots, the replication role,
primary_conninfo). imagedb's own tables are the store's; these statements are about the server itself."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from imagedb.pg.cluster import postmaster
from imagedb.pg.connection import connect

REPLICA_FILE = "replica.json"
REGISTRY_FILE = "replicas.json"
SLOT_PREFIX = "imagedb_replica_"


def slot_name(target: Path) -> str:
    """One slot (and replication role) per replica folder, named after its path."""
    return SLOT_PREFIX + hashlib.sha256(str(target).encode()).hexdigest()[:12]


def register(primary_home: Path, target: Path, *, add: bool) -> None:
    """The primary's list of its replicas' folders, so a change of its socket can be passed on to them."""
    known = registered(primary_home)
    known = [k for k in known if k != target] + ([target] if add else [])
    (primary_home / REGISTRY_FILE).write_text(json.dumps([str(k) for k in known]) + "\n")


def registered(primary_home: Path) -> list[Path]:
    try:
        return [Path(p) for p in json.loads((primary_home / REGISTRY_FILE).read_text())]
    except (OSError, ValueError, TypeError):
        return []


def read_meta(home: Path) -> dict[str, str] | None:
    try:
        data = json.loads((home / REPLICA_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def follow_primary(home: Path, owner_url: str) -> None:
    """On a replica imagedb made: if its primary now listens on another socket or port (after `imagedb db
    listen`), point the replica there. A stopped primary is left alone: the replica keeps serving reads."""
    meta = read_meta(home)
    info = postmaster(Path(meta["primary_home"]) / "pgdata") if meta else None
    if info is None or not (home / "pgdata" / "standby.signal").exists():
        return
    with connect(owner_url) as conn:
        repoint_standby(conn, str(info.socket_dir), str(info.port or 5432))


def primary_of_standby(conn: psycopg.Connection) -> str | None:
    """None on a primary; on a standby, where its primary is ("host=... port=..."), or "its primary" when
    this role may not read that (primary_conninfo is for superusers: it can hold a password)."""
    if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:  # type: ignore[index]
        return None
    try:
        conninfo = conn.execute("SELECT current_setting('primary_conninfo')").fetchone()[0]  # type: ignore[index]
    except psycopg.errors.InsufficientPrivilege:
        return "its primary"
    params = psycopg.conninfo.conninfo_to_dict(conninfo) if conninfo else {}
    shown = " ".join(f"{k}={params[k]}" for k in ("host", "port") if params.get(k))  # never the password
    return shown or "its primary"


def standby_status(conn: psycopg.Connection) -> dict[str, Any]:
    """On a standby: whether its receiver streams, how long ago the last replayed commit was made on the
    primary, and how many received bytes are not replayed yet.

    `receiver` is pg_stat_wal_receiver's status, which PostgreSQL shows only to superusers and roles with
    pg_read_all_stats; every other role sees the receiver's pid alone (`receiver_pid`), enough to tell a
    receiver that runs from none (the view has no row when the standby is cut off from its primary)."""
    row = conn.execute(
        "SELECT (SELECT status FROM pg_stat_wal_receiver), (SELECT pid FROM pg_stat_wal_receiver),"
        " extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,"
        # A restarted standby's receive position starts at the segment it streams from, behind what it has
        # already replayed: nothing is waiting then, not a negative amount.
        " greatest(0, pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()))::bigint"
    ).fetchone()
    keys = ("receiver", "receiver_pid", "replay_age_seconds", "unreplayed_bytes")
    return dict(zip(keys, row, strict=True))  # type: ignore[arg-type]


def receiver_state(status: dict[str, Any]) -> str:
    """A standby's receiver in words, true for any role: its status when this role may see it, else whether one
    runs (a plain role sees the pid of a receiver, never "not connected" for a receiver that streams)."""
    if status["receiver"] is not None:
        return str(status["receiver"])
    if status["receiver_pid"] is not None:
        return "running (streaming, unless it has just started; its exact state needs pg_read_all_stats)"
    return "not connected (the primary is down or unreachable; reads still work)"


def replicas(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """On a primary: each physical replication slot (one per replica imagedb made), whether its replica is
    connected, and how far behind it is; a disconnected one shows the WAL its slot holds back. pg_stat_replication
    shows its state and lag only to superusers and pg_read_all_stats; the slot's `active` is there for any role."""
    rows = conn.execute(
        "SELECT s.slot_name, s.active, r.state,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(r.replay_lsn, s.restart_lsn))::bigint,"
        " extract(epoch FROM r.replay_lag)::float8, s.wal_status"
        " FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid"
        " WHERE s.slot_type = 'physical' ORDER BY s.slot_name"
    ).fetchall()
    keys = ("slot", "active", "state", "behind_bytes", "replay_lag_seconds", "wal_status")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def limit_slot_wal(conn: psycopg.Connection, size: str) -> None:
    """Cap the WAL a replication slot may hold back (max_slot_wal_keep_size), so a dead replica cannot fill
    the disk: past the cap its slot is invalidated and that replica must be made again."""
    # Utility statements take no bound parameters; the size is checked by the caller (replicas.WAL_SIZE).
    conn.execute(sql.SQL("ALTER SYSTEM SET max_slot_wal_keep_size = {}").format(sql.Literal(size)))
    conn.execute("SELECT pg_reload_conf()")


def create_replication_role(conn: psycopg.Connection, role: str, password: str) -> None:
    """A role that may stream WAL and nothing else (not a superuser): one per replica, so one can be revoked."""
    name = sql.Identifier(role)
    with conn.transaction():
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("ALTER ROLE {} REPLICATION LOGIN PASSWORD {}").format(name, sql.Literal(password)))
        else:
            conn.execute(sql.SQL("CREATE ROLE {} REPLICATION LOGIN PASSWORD {}").format(name, sql.Literal(password)))


def drop_replication(conn: psycopg.Connection, slot: str) -> bool:
    """Drop a replica's slot (freeing the WAL it holds) and its replication role; False if neither existed."""
    found = False
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (slot,)).fetchone():
        # A standby still streaming (its folder deleted by hand, its server not yet noticed) must not log in
        # again between its walsender's end and the slot's drop.
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(slot)))
    if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone():
        _release_slot(conn, slot)
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        found = True
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (slot,)).fetchone():
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(slot)))
        found = True
    return found


def _release_slot(conn: psycopg.Connection, slot: str, seconds: float = 10.0) -> None:
    """End the walsender holding a slot and wait until the slot is free: an active slot cannot be dropped."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT active_pid, pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE slot_name = %s AND active_pid IS NOT NULL",
            (slot,),
        ).fetchone()
        if row is None:
            return
        time.sleep(0.1)


def repoint_standby(conn: psycopg.Connection, host: str, port: str) -> bool:
    """On a standby: point primary_conninfo at the primary's new socket or port (it moves when `imagedb db
    listen` changes the port), keeping the rest (the replication role's password); True if it changed."""
    conninfo = conn.execute("SELECT current_setting('primary_conninfo')").fetchone()[0]  # type: ignore[index]
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    if (params.get("host"), str(params.get("port"))) == (host, port):
        return False
    params.update(host=host, port=port)
    new = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})
    conn.execute(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(new)))
    conn.execute("SELECT pg_reload_conf()")  # the WAL receiver restarts with the new conninfo
    return True
