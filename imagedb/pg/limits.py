"""What one login may cost the server, and what an owner command does when another session holds its lock.

Roles made by `imagedb grant-reader` and `grant-writer` get per-role settings (ALTER ROLE ... SET, so they hold in
every database of the server and for any client): statement and idle-in-transaction timeouts, a connection limit
and a temporary-file limit. Large objects cannot be created by them (EXECUTE on the creating functions is revoked
from PUBLIC in imagedb's database), nor temporary tables, which temp_file_limit does not count (TEMPORARY on the
database is revoked from PUBLIC: imagedb uses none). The defaults, and why, are in docs/security.md.

imagedb's own connections wait at most LOCK_TIMEOUT_S for a lock; when that ends, `blocker_line` names the
session in the way, from pg_locks and pg_stat_activity.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # psycopg is imported where it is used: `imagedb --help` reads the defaults below without it
    import psycopg

# A lock wait of imagedb's own connections (owner commands, ingest, searches) ends after this long. Batch writes
# hold their locks for well under a second; a wait of 10 s is a session holding a table, not a busy moment.
LOCK_TIMEOUT_S = 10

# What PUBLIC (every role but the owner and superusers) may not run in imagedb's database, by name: every signature
# the server has is refused (they differ between versions).
# - Creating large objects: `lo_from_bytea`, `lo_import` and psql's `\lo_import` (lo_creat over the fastpath).
#   Objects outlive the session and go into every dump; imagedb stores none.
# - pg_logical_emit_message writes WAL of any size: a reader wrote 3.8 GB in 9 s, past a running replica's
#   `--max-wal`, whose slot PostgreSQL then dropped. imagedb uses no logical decoding.
# - pg_current_xact_id and txid_current take a transaction id each call: one reader used 235,000 a second, which
#   brings anti-wraparound vacuums every few minutes and, with a snapshot held open, the server's refusal of every
#   write. imagedb's own code asks pg_current_xact_id_if_assigned, which takes none. Statements such as NOTIFY still
#   take one per transaction, which no privilege governs (docs/security.md).
REFUSED_FUNCTIONS = (
    "lo_creat",
    "lo_create",
    "lo_from_bytea",
    "lo_import",
    "pg_logical_emit_message",
    "pg_current_xact_id",
    "txid_current",
)
_SIGNATURES = (
    "SELECT oid::regprocedure::text FROM pg_proc"
    " WHERE proname = ANY(%s) AND pronamespace = 'pg_catalog'::regnamespace ORDER BY 1"
)


# The largest values the options take: a day of statement, and what the server's settings hold (temp_file_limit is
# an int of kB).
MAX_TIMEOUT_S = 86_400
MAX_CONNECTIONS = 10_000
MAX_TEMP_FILE_MB = (2**31 - 1) // 1024


@dataclass(frozen=True)
class RoleLimits:
    statement_timeout_s: int  # 0: none
    idle_in_transaction_s: int  # 0: none
    connection_limit: int  # -1: none
    temp_file_limit_mb: int  # -1: none

    def problem(self) -> str | None:
        """What PostgreSQL would refuse in these limits (checked before anything is granted), or None."""
        for label, value, low, high in (
            ("statement timeout", self.statement_timeout_s, 0, MAX_TIMEOUT_S),
            ("idle-in-transaction timeout", self.idle_in_transaction_s, 0, MAX_TIMEOUT_S),
            ("connection limit", self.connection_limit, -1, MAX_CONNECTIONS),
            ("temporary-file limit", self.temp_file_limit_mb, -1, MAX_TEMP_FILE_MB),
        ):
            if not low <= value <= high:
                return f"the {label} must be between {low} and {high}, not {value}"
        return None

    def adjusted(self, **given: int | None) -> RoleLimits:
        """These limits with the ones given (not None) in their place."""
        return replace(self, **{k: v for k, v in given.items() if v is not None})


# What a reader's or writer's session may write to the server log: nothing but FATAL lines, and never its statement.
# PostgreSQL logs a failed conversion with its value, raw (`SELECT repeat('x', 5000000)::int`: 5 MB a statement),
# and RAISE WARNING/LOG writes what the caller chooses. Their connections and failed logins are logged before these
# apply, so they stay visible. Only a superuser may set these (on another server its administrator).
QUIET_LOG = {"log_min_messages": "fatal", "log_min_error_statement": "panic"}
# What grant-* sets on a role; `db repair` removes a role's other settings of its own and keeps these.
MANAGED = ("statement_timeout", "idle_in_transaction_session_timeout", "temp_file_limit", *QUIET_LOG)

READER_LIMITS = RoleLimits(statement_timeout_s=60, idle_in_transaction_s=60, connection_limit=20,
                           temp_file_limit_mb=1024)  # fmt: skip
WRITER_LIMITS = RoleLimits(statement_timeout_s=300, idle_in_transaction_s=60, connection_limit=20,
                           temp_file_limit_mb=1024)  # fmt: skip


def set_role_limits(conn: psycopg.Connection, role: str, limits: RoleLimits) -> list[str]:
    """Give `role` these limits; returns those the server refused. temp_file_limit may only be set by a superuser
    (or a role granted SET on it), any of them only by a role with CREATEROLE (ADMIN on the role since PostgreSQL
    16): on a server where imagedb's role has neither, they are left to its administrator."""
    import psycopg
    from psycopg import sql

    name = sql.Identifier(role)
    settings = {
        "statement_timeout": f"{limits.statement_timeout_s}s",
        "idle_in_transaction_session_timeout": f"{limits.idle_in_transaction_s}s",
        "temp_file_limit": f"{limits.temp_file_limit_mb}MB" if limits.temp_file_limit_mb >= 0 else "-1",
        **QUIET_LOG,
    }
    statements = {"connection limit": sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
        name, sql.Literal(limits.connection_limit)
    )}  # fmt: skip
    for setting, value in settings.items():
        statements[setting] = sql.SQL("ALTER ROLE {} SET {} = {}").format(
            name, sql.Identifier(setting), sql.Literal(value)
        )
    # Also in imagedb's database, where PostgreSQL applies a role's own settings there first: a bad value the role
    # stored there (ALTER ROLE self IN DATABASE ... SET) was logged raw at every login before `fatal` took hold.
    database = sql.Identifier(conn.info.dbname)
    for setting, value in QUIET_LOG.items():
        statements[f"{setting} in this database"] = sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
            name, database, sql.Identifier(setting), sql.Literal(value)
        )
    refused = []
    with conn.transaction():
        for what, statement in statements.items():
            try:
                with conn.transaction():  # a savepoint: one refused limit leaves the others
                    conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege:
                refused.append(what)
    return refused


def harden_database(conn: psycopg.Connection) -> bool:
    """In the current database, refuse REFUSED_FUNCTIONS and temporary tables to every role but the owner and
    superusers; returns False where imagedb's role may not (not a superuser: then the server's administrator
    decides, docs/security.md says how)."""
    from psycopg import sql

    if not _is_superuser(conn):
        return False
    # The signatures come from the server's own catalog, for names that are constants above, never input.
    signatures = [row[0] for row in conn.execute(_SIGNATURES, (list(REFUSED_FUNCTIONS),))]
    database = sql.Identifier(conn.info.dbname)
    with conn.transaction():
        functions = sql.SQL(", ").join(sql.SQL(s) for s in signatures)  # type: ignore[arg-type]
        conn.execute(sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM PUBLIC").format(functions))
        conn.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(database))
    return True


def functions_public_may_run(conn: psycopg.Connection) -> list[str]:
    """Which of REFUSED_FUNCTIONS' signatures PUBLIC (so every role not granted it) may still run here."""
    signatures = [row[0] for row in conn.execute(_SIGNATURES, (list(REFUSED_FUNCTIONS),))]
    allowed = conn.execute(
        "SELECT array_agg(s ORDER BY s) FROM unnest(%s::text[]) s"
        " WHERE has_function_privilege('public', s::regprocedure, 'EXECUTE')",
        (signatures,),
    ).fetchone()
    return list(allowed[0] or []) if allowed else []


def _is_superuser(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


# imagedb's roles, found by what grant-reader (SELECT on image_catalog) and grant-writer (INSERT on embeddings) gave;
# imagedb's tables are in public or, from the revision `internal` on, in imagedb_internal.
_ROLE_LIMITS = """
SELECT r.rolname, kind, r.rolconnlimit,
       (SELECT array_agg(s) FROM pg_db_role_setting d, unnest(d.setconfig) s
        WHERE d.setrole = r.oid AND d.setdatabase = 0)
FROM (SELECT DISTINCT grantee::text AS role, CASE table_name WHEN 'embeddings' THEN 'writer' ELSE 'reader' END AS kind
      FROM information_schema.role_table_grants
      WHERE table_schema IN ('public', 'imagedb_internal') AND grantee NOT IN (current_user, 'PUBLIC')
        AND ((table_name = 'embeddings' AND privilege_type = 'INSERT')
             OR (table_name = 'image_catalog' AND privilege_type = 'SELECT'))) g
JOIN pg_roles r ON r.rolname = g.role
ORDER BY r.rolname, kind DESC
"""
_SHOWN = ("statement_timeout", "idle_in_transaction_session_timeout", "temp_file_limit", "log_min_messages")


def role_limit_lines(conn: psycopg.Connection) -> list[str]:
    """One line per role imagedb granted to: its kind and limits (for `imagedb db info`)."""
    seen: dict[str, str] = {}
    for role, kind, connlimit, config in conn.execute(_ROLE_LIMITS).fetchall():
        if role in seen:
            continue  # a writer that is also a reader: its writer line says it
        settings = dict(item.split("=", 1) for item in config or [])
        shown = [f"{s}={settings.get(s, 'unset')}" for s in _SHOWN]
        limit = "none" if connlimit < 0 else str(connlimit)
        seen[role] = f"role {role!r} ({kind}): {', '.join(shown)}, connection limit {limit}"
    lines = list(seen.values())
    allowed = functions_public_may_run(conn)
    if allowed:
        lines.append(f"every role may run {', '.join(allowed)} (imagedb's role could not refuse them)")
    else:
        lines.append(f"refused to imagedb's roles: {', '.join(REFUSED_FUNCTIONS)}")
    return lines


# A role's own session defaults beyond this many bytes: PostgreSQL lets any login run `ALTER ROLE self SET
# search_path = ...` (also IN DATABASE), storing the value whole in the shared catalog; one reader stored 63 MB so.
# grant-*'s own settings take under 300 bytes.
OWN_SETTINGS_BYTES = 4096
_OWN_SETTINGS = """
SELECT r.rolname, sum(octet_length(array_to_string(d.setconfig, '')))
FROM pg_db_role_setting d JOIN pg_roles r ON r.oid = d.setrole
WHERE r.rolname = ANY(%s)
GROUP BY r.rolname HAVING sum(octet_length(array_to_string(d.setconfig, ''))) > %s
ORDER BY r.rolname
"""


def oversized_settings(conn: psycopg.Connection) -> list[tuple[str, str, int]]:
    """imagedb's readers and writers whose session defaults exceed OWN_SETTINGS_BYTES: (role, kind, bytes)."""
    kinds = _role_kinds(conn)
    rows = conn.execute(_OWN_SETTINGS, (list(kinds), OWN_SETTINGS_BYTES)).fetchall()
    return [(role, kinds[role], int(size)) for role, size in rows]


def settings_problems(conn: psycopg.Connection) -> list[str]:
    """For `db check`: one line per role found by oversized_settings."""
    return [
        f"role {role!r} ({kind}) stores {size:,} bytes of session defaults of its own (ALTER ROLE ... SET, which"
        " PostgreSQL lets any login run on itself): `imagedb db repair` removes them"
        for role, kind, size in oversized_settings(conn)
    ]


def reset_settings(conn: psycopg.Connection) -> dict[str, list[str]]:
    """For `db repair`: each role found by oversized_settings loses the session defaults it set on itself, in every
    database: all but MANAGED, which keep their values (an operator's own limits included); the catalog is then
    rewritten where imagedb's role may (a superuser). Returns each role reset with the settings removed."""
    from psycopg import sql

    removed: dict[str, list[str]] = {}
    for role, _, _ in oversized_settings(conn):
        name = sql.Identifier(role)
        rows = conn.execute(
            "SELECT d.setdatabase, db.datname, d.setconfig FROM pg_db_role_setting d"
            " JOIN pg_roles r ON r.oid = d.setrole LEFT JOIN pg_database db ON db.oid = d.setdatabase"
            " WHERE r.rolname = %s",
            (role,),
        ).fetchall()
        with conn.transaction():
            for database, datname, config in rows:
                where = sql.SQL(" IN DATABASE {}").format(sql.Identifier(datname)) if int(database) else sql.SQL("")
                for setting in sorted({item.split("=", 1)[0] for item in config or []} - set(MANAGED)):
                    conn.execute(sql.SQL("ALTER ROLE {}{} RESET {}").format(name, where, sql.Identifier(setting)))
                    removed.setdefault(role, []).append(setting)
    if removed and _is_superuser(conn):
        conn.execute("VACUUM FULL pg_db_role_setting")  # gives the space back to the filesystem
    return removed


def _role_kinds(conn: psycopg.Connection) -> dict[str, str]:
    """imagedb's readers and writers, each with its kind (a writer that is also a reader is a writer)."""
    kinds: dict[str, str] = {}
    for role, kind, _, _ in conn.execute(_ROLE_LIMITS).fetchall():
        kinds.setdefault(role, kind)
    return kinds


def set_lock_timeout(conn: psycopg.Connection) -> None:
    """Make this session's lock waits end after LOCK_TIMEOUT_S (an error, which `blocker_line` explains)."""
    conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{LOCK_TIMEOUT_S}s",))


# Sessions of this database holding a lock granted: the ones not waiting themselves first, those holding an
# exclusive table lock first, then the oldest transaction. pg_locks is readable by every role; pg_stat_activity
# shows another role's query and times only to a superuser or pg_read_all_stats.
_BLOCKERS = """
SELECT l.pid, a.usename, a.application_name, extract(epoch FROM now() - a.xact_start)::int, a.state,
       left(regexp_replace(a.query, '\\s+', ' ', 'g'), 60)
FROM (SELECT pid, bool_or(mode = 'AccessExclusiveLock' AND locktype = 'relation') AS exclusive
      FROM pg_locks WHERE granted AND pid IS NOT NULL AND pid <> pg_backend_pid()
        AND (database = (SELECT oid FROM pg_database WHERE datname = current_database())
             OR locktype IN ('virtualxid', 'transactionid'))
      GROUP BY pid) l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE a.backend_type = 'client backend' AND a.datname = current_database()
ORDER BY a.wait_event_type IS NOT DISTINCT FROM 'Lock', l.exclusive DESC, a.xact_start NULLS LAST
LIMIT 1
"""


def blocker_line(conn: psycopg.Connection) -> str:
    """What to tell the user when a lock wait of ours timed out: who holds the lock and how to end that session."""
    import psycopg

    try:
        row = conn.execute(_BLOCKERS).fetchone()
    except psycopg.Error:
        row = None
    return _line(row)


def _line(row: Any) -> str:
    waited = f"waited {LOCK_TIMEOUT_S} s for a lock another session holds; the command stopped (what it had"
    waited += " committed before stays, the rest was rolled back)"
    if row is None:
        return f"{waited}: see pg_stat_activity, then rerun"
    pid, role, application, seconds, state, query = row
    held = f"in a transaction for {seconds} s" if seconds is not None else "in a transaction"
    what = f", {state}" if state else ""
    words = f": {query!r}" if query else ""
    app = f", application {application!r}" if application else ""
    return (
        f"{waited}: session {pid} (role {role!r}{app}, {held}{what}{words}) holds it;"
        f" end it with `SELECT pg_terminate_backend({pid})` as imagedb's role (imagedb db psql), then rerun"
    )


# A session of `application` waiting for a lock since its statement began, longer than LOCK_TIMEOUT_S, and the first
# session pg_blocking_pids names as in its way.
_WAITING = """
SELECT a.pid, b.pid, b.usename, b.application_name, extract(epoch FROM now() - b.xact_start)::int, b.state,
       left(regexp_replace(b.query, '\\s+', ' ', 'g'), 60)
FROM pg_stat_activity a, unnest(pg_blocking_pids(a.pid)) AS blocker(pid)
JOIN pg_stat_activity b ON b.pid = blocker.pid
WHERE a.application_name = %s AND a.wait_event_type = 'Lock' AND now() - a.state_change > make_interval(secs => %s)
LIMIT 1
"""


@contextmanager
def lock_watch(url: str, application: str, poll_s: float = 0.5) -> Iterator[list[str]]:
    """For client programs that set lock_timeout to 0 themselves (pg_restore's archive header does): while the block
    runs, their session (named `application`) is cancelled once it has waited LOCK_TIMEOUT_S for a lock, and the
    list yielded gets the line naming the session in its way."""
    import psycopg

    found: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                while not stop.wait(poll_s):
                    row = conn.execute(_WAITING, (application, LOCK_TIMEOUT_S)).fetchone()
                    if row is not None:
                        found.append(_line(row[1:]))
                        conn.execute("SELECT pg_cancel_backend(%s)", (row[0],))
                        return
        except psycopg.Error:
            return  # the watch is a help: the program's own outcome stands

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join()
