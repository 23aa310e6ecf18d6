"""A full disk under the database, said as such: where, and how much is free.

PostgreSQL reports a table or index that cannot grow with SQLSTATE 53100 (disk_full). When the WAL cannot grow it
PANICs instead, and every client only sees "server closed the connection unexpectedly"; the cause is in the
server's log. Both are recognised here, for the embedded server (whose data directory is on this machine) and, from
the SQLSTATE alone, for any other.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg

from imagedb import config
from imagedb.errors import DatabaseUnavailable
from imagedb.pg.cluster import log_tail

_NO_SPACE = "No space left on device"
# Below this much free space a server that went away is taken to have died of it (a WAL segment is 16 MB).
_NEARLY_FULL = 32 * 2**20
_LOG_TAIL = 64 * 1024


class DiskFull(DatabaseUnavailable):
    """The database's disk is full: nothing more can be stored until space is freed."""

    exit_code = 1
    http_status = 507  # Insufficient Storage: the server's state, not the request; no retry helps until space is freed


def disk_full(exc: BaseException, url: str | None, home: str | Path | None) -> DiskFull | None:
    """The DiskFull error that explains `exc` (a psycopg error), or None when the disk is not what failed."""
    if not isinstance(exc, psycopg.Error):
        return None
    pgdata = data_directory(url, home)
    said = isinstance(exc, psycopg.errors.DiskFull) or _NO_SPACE in str(exc)
    if not said and _server_gone(exc) and pgdata is not None:
        said = _log_says_full(pgdata) or _free(pgdata) < _NEARLY_FULL
    if not said:
        return None
    where = (
        f"{_free(pgdata) / 2**20:.1f} MB free on the filesystem of the data directory {pgdata}"
        if pgdata is not None
        else "on the database server (see its log for where)"
    )
    return DiskFull(
        f"the database's disk is full: {where}. Free space there, then run the command again: what was committed"
        " is kept, and a rerun of an ingest stores the rest and builds any index it had to leave"
    )


def data_directory(url: str | None, home: str | Path | None) -> Path | None:
    """The embedded server's data directory on this machine, when the command uses it (its own URL, or a URL whose
    socket folder is a data directory, as the embedded server's usually is); None for another server."""
    explicit = config.database_url(url)
    if explicit is None:
        candidate = config.home(home) / "pgdata"
        return candidate if (candidate / "PG_VERSION").exists() else None
    hosts = parse_qs(urlsplit(explicit).query).get("host", []) or [urlsplit(explicit).hostname or ""]
    for host in hosts:
        if host.startswith("/") and (Path(host) / "PG_VERSION").exists():
            return Path(host)
    return None


def _server_gone(exc: psycopg.Error) -> bool:
    """The connection was lost or refused (no SQLSTATE: libpq's own error), or the server is crashing or
    restarting (57P..): not a statement's own error such as a lock timeout."""
    return isinstance(exc, psycopg.OperationalError) and (
        exc.sqlstate is None or exc.sqlstate.startswith(("57P", "08"))
    )


def _free(pgdata: Path) -> int:
    try:
        return shutil.disk_usage(pgdata).free
    except OSError:
        return 0


def _log_says_full(pgdata: Path) -> bool:
    tail = log_tail(pgdata, _LOG_TAIL)
    # The server's last words, since it last started: a PANIC for want of space.
    recent = tail.rsplit("database system is ready to accept connections", 1)[-1]
    return _NO_SPACE in recent and "PANIC" in recent
