"""What one login may cost (issue 22, items 1, 6 and 15): per-role limits set by grant-* and by the migration, no
large objects or temporary tables for imagedb's roles, owner commands that never wait forever behind another
session's lock, failed logins logged with the client's address, and password rules."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg
import pytest
from alembic import command
from click.testing import CliRunner

from imagedb.cli import main
from imagedb.errors import InvalidInput
from imagedb.pg.cluster import log_files, log_tail, program
from imagedb.pg.connection import sqlalchemy_url
from imagedb.pg.embedded import embedded_url, stop_embedded
from imagedb.pg.limits import LOCK_TIMEOUT_S, MAX_TEMP_FILE_MB, READER_LIMITS
from imagedb.pg.migrate import alembic_config
from imagedb.roles import checked_password, grant_reader, grant_writer
from imagedb.store import Store

from conftest import with_database

PASSWORD = "a-limited-login-pw"
_names = iter(range(1_000_000))


def _role(kind: str) -> str:
    return f"lim_{kind}_{os.getpid()}_{next(_names)}"


def _login(url: str, role: str, password: str = PASSWORD) -> str:
    parts = urlsplit(url)
    host = parts.netloc.split("@")[-1]
    query = "&".join(f"{k}={v[0]}" for k, v in parse_qs(parts.query).items() if k != "passfile")
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}", query=query))


def _settings(conn: psycopg.Connection, role: str) -> tuple[int, dict[str, str]]:
    limit, config = conn.execute("SELECT rolconnlimit, rolconfig FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    return limit, dict(item.split("=", 1) for item in config or [])


def test_grant_gives_each_role_its_default_limits_and_db_info_shows_them(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, writer = _role("r"), _role("w")
    grant_reader(store, reader, PASSWORD)
    grant_writer(store, writer, PASSWORD)
    assert _settings(store.conn, reader) == (
        20,
        {"statement_timeout": "60s", "idle_in_transaction_session_timeout": "60s", "temp_file_limit": "1024MB",
         "log_min_messages": "fatal", "log_min_error_statement": "panic"},
    )  # fmt: skip
    assert _settings(store.conn, writer)[1]["statement_timeout"] == "300s"
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    result = CliRunner().invoke(main, ["grant-reader", reader, "--statement-timeout", "5", "--connection-limit", "3"])
    assert result.exit_code == 0, result.output
    assert "limits: statements 5 s" in result.output and "3 connections" in result.output
    assert _settings(store.conn, reader)[0] == 3 and _settings(store.conn, reader)[1]["statement_timeout"] == "5s"
    info = CliRunner().invoke(main, ["db", "info"])
    assert info.exit_code == 0, info.output
    assert f"role '{reader}' (reader): statement_timeout=5s" in info.output and "connection limit 3" in info.output
    assert f"role '{writer}' (writer): statement_timeout=300s" in info.output
    assert "refused to imagedb's roles: lo_creat, lo_create, lo_from_bytea, lo_import, pg_logical_emit" in info.output


def test_readers_and_writers_cannot_create_large_objects_or_temporary_tables_or_write_wal(
    store: Store, database_url: str
) -> None:
    """A fourth outside attack: a reader wrote 3.8 GB of WAL in 9 s with pg_logical_emit_message, and a running
    replica's slot was dropped; it took 235,000 transaction ids a second with pg_current_xact_id."""
    roles = [_role("r"), _role("w")]
    grant_reader(store, roles[0], PASSWORD)
    grant_writer(store, roles[1], PASSWORD)
    payload = Path(os.environ.get("TMPDIR", "/tmp")) / f"lo_{os.getpid()}.bin"
    payload.write_bytes(b"x" * 1000)
    try:
        for role in roles:
            with psycopg.connect(_login(database_url, role), autocommit=True) as conn:
                for statement in (
                    "SELECT lo_from_bytea(0, 'x')",
                    "SELECT lo_creat(-1)",
                    "SELECT lo_create(0)",
                    "CREATE TEMP TABLE filler (x text)",
                    "SELECT pg_logical_emit_message(false, 'p', repeat('x', 1000))",
                    "SELECT pg_logical_emit_message(true, 'p', '\\x00'::bytea)",
                    "SELECT pg_current_xact_id()",
                    "SELECT txid_current()",
                ):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        conn.execute(statement)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):  # a superuser's setting
                    conn.execute("SET temp_file_limit = -1")
            # psql's \lo_import creates the object over the fastpath (lo_creat), which checks EXECUTE too.
            done = subprocess.run(
                [program("psql"), "-X", "-d", _login(database_url, role), "-c", f"\\lo_import {payload}"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode != 0 and "permission denied for function lo_creat" in done.stderr, done.stderr
        assert store.conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0] == 0
        # Nor in the embedded server's own databases, where the revokes above do not reach: no login there at all.
        if "passfile" in database_url:
            for other in ("postgres", "template1"):
                with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
                    psycopg.connect(_login(with_database(database_url, other), roles[0])).close()
    finally:
        payload.unlink()


def test_each_limit_holds_for_the_role(store: Store, database_url: str) -> None:
    role = _role("r")
    tight = READER_LIMITS.adjusted(
        statement_timeout_s=1, idle_in_transaction_s=1, connection_limit=2, temp_file_limit_mb=1
    )
    grant_reader(store, role, PASSWORD, tight)
    url = _login(database_url, role)
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute("SELECT pg_sleep(5)")
        conn.execute("SET statement_timeout = 0")  # a session may change its own timeouts, never temp_file_limit
        conn.execute("SET work_mem = '64kB'")
        with pytest.raises(psycopg.errors.ConfigurationLimitExceeded, match="temp_file_limit"):
            conn.execute("SELECT count(*) FROM (SELECT md5(g::text) FROM generate_series(1, 300000) g ORDER BY 1) s")
    conn = psycopg.connect(url)  # not autocommit: the SELECT opens a transaction left idle
    with conn:
        conn.execute("SELECT 1")
        time.sleep(2.5)
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            conn.execute("SELECT 1")
    first, second = psycopg.connect(url), psycopg.connect(url)
    try:
        with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
            psycopg.connect(url).close()
    finally:
        first.close()
        second.close()


def test_the_migration_limits_roles_made_before_it(store: Store, database_url: str) -> None:
    reader, writer = _role("r"), _role("w")
    grant_reader(store, reader, PASSWORD)
    grant_writer(store, writer, PASSWORD)
    _migrate(database_url, command.downgrade, _before("limits"))  # as an older imagedb left them: no limits
    assert _settings(store.conn, reader) == (-1, {})
    assert store.conn.execute("SELECT has_function_privilege('public', 'lo_creat(integer)', 'EXECUTE')").fetchone()[0]
    _migrate(database_url, command.upgrade, "head")
    assert _settings(store.conn, reader) == (20, _settings(store.conn, reader)[1])
    assert _settings(store.conn, reader)[1]["statement_timeout"] == "60s"
    assert _settings(store.conn, writer)[1]["statement_timeout"] == "300s"
    assert _settings(store.conn, writer)[1]["temp_file_limit"] == "1024MB"
    with psycopg.connect(_login(database_url, reader), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT lo_from_bytea(0, 'x')")


def test_the_migration_refuses_wal_and_transaction_ids_and_downgrades(store: Store, database_url: str) -> None:
    reader = _role("r")
    grant_reader(store, reader, PASSWORD)
    may = "SELECT has_function_privilege('public', %s::regprocedure, 'EXECUTE')"
    functions = ["pg_current_xact_id()", "txid_current()", "pg_logical_emit_message(boolean, text, text, boolean)"]
    _migrate(database_url, command.downgrade, _before("wal"))  # as an older imagedb left them
    assert all(store.conn.execute(may, (f,)).fetchone()[0] for f in functions)
    _migrate(database_url, command.upgrade, "head")
    assert not any(store.conn.execute(may, (f,)).fetchone()[0] for f in functions)
    with psycopg.connect(_login(database_url, reader), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_current_xact_id"):
            conn.execute("SELECT pg_current_xact_id()")


def _before(revision: str) -> str:
    """The revision before this one (the lead re-chains migrations when merging branches)."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(alembic_config()).get_revision(revision).down_revision)


def _migrate(url: str, step, revision: str) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    engine = create_engine(sqlalchemy_url(url))
    config = alembic_config()
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            step(config, revision)
    finally:
        engine.dispose()


def test_passwords_a_guesser_tries_early_are_refused(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for weak in ("short-pw", "aaaaaaaaaaaaaaaa", "121212121212121", "bi_reader_2026!"):
        with pytest.raises(InvalidInput):
            checked_password(weak, "bi_reader")
    assert checked_password("correct horse battery", "bi_reader") == "correct horse battery"
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    role = _role("r")
    refused = CliRunner().invoke(main, ["grant-reader", role, "--password", "secret"])
    assert refused.exit_code == 2 and "shorter than 12 characters" in refused.output
    made = CliRunner().invoke(main, ["grant-reader", role, "--generate-password"])
    assert made.exit_code == 0, made.output
    password = made.output.split("password (shown once, store it now): ")[1].strip()
    assert len(password) >= 20
    with psycopg.connect(_login(database_url, role, password)) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role


def test_a_failed_login_is_logged_with_the_client_address(server_url: str, store: Store, database_url: str) -> None:
    home = Path(parse_qs(urlsplit(server_url).query)["passfile"][0]).parent
    if not log_files(home / "pgdata"):
        pytest.skip("an external server: its log is its administrator's")
    role = _role("r")
    grant_reader(store, role, PASSWORD)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(_login(database_url, role, "a-wrong-guess-of-it"), connect_timeout=5).close()
    lines = _logged(home / "pgdata", f'password authentication failed for user "{role}"')
    assert lines and f"client=[local] user={role} " in lines[-1], lines


def _logged(pgdata: Path, wanted: str) -> list[str]:
    """The lines of the server's log (the file written last) that hold `wanted`, once there are some."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if lines := [line for line in log_tail(pgdata, 2**22).splitlines() if wanted in line]:
            return lines
        time.sleep(0.1)
    return []


@pytest.mark.slow
def test_clients_that_never_log_in_are_dropped_soon_and_the_owner_is_told_what_happened(tmp_path: Path) -> None:
    """A second outside attack: 130 connections that sent a startup packet and never answered the password request
    held every slot for a minute, and `db info` said it could not start the running server."""
    home = tmp_path / "home"
    run = CliRunner(env={"IMAGEDB_DATABASE_URL": None})
    held: list[socket.socket] = []
    try:
        assert run.invoke(main, ["--home", str(home), "db", "info"]).exit_code == 0
        url = embedded_url(home, "postgres")
        with psycopg.connect(url) as conn:
            assert conn.execute("SHOW authentication_timeout").fetchone() == ("10s",)
            slots = int(conn.execute("SHOW max_connections").fetchone()[0])
        params = parse_qs(urlsplit(url).query)
        path = f"{params['host'][0]}/.s.PGSQL.{params.get('port', ['5432'])[0]}"
        body = b"\x00\x03\x00\x00user\x00nobody\x00database\x00imagedb\x00\x00"
        for _ in range(slots + 5):
            client = socket.socket(socket.AF_UNIX)
            client.connect(path)
            client.sendall((len(body) + 4).to_bytes(4, "big") + body)  # then silence: no password
            held.append(client)
        time.sleep(0.5)
        refused = run.invoke(main, ["--home", str(home), "db", "info"])
        assert refused.exit_code != 0 and "is running but refused imagedb's connection" in refused.output
        assert "could not start" not in refused.output and "Traceback" not in refused.output
        time.sleep(12)  # authentication_timeout: the server drops them
        assert run.invoke(main, ["--home", str(home), "db", "info"]).exit_code == 0
    finally:
        for client in held:
            client.close()
        stop_embedded(home)


@pytest.mark.slow
def test_a_failed_login_over_tcp_is_logged_with_its_address(tmp_path: Path) -> None:
    """The line a rate limiter (fail2ban) matches: the client's IP address and the failure, on one line."""
    home = tmp_path / "home"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = CliRunner(env={"IMAGEDB_DATABASE_URL": None})
    try:
        assert run.invoke(main, ["--home", str(home), "db", "listen", f"127.0.0.1:{port}"]).exit_code == 0
        granted = run.invoke(main, ["--home", str(home), "grant-reader", "bi_guessed", "--password", PASSWORD])
        assert granted.exit_code == 0, granted.output
        for _ in range(3):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(
                    host="127.0.0.1", port=port, user="bi_guessed", password="not-the-one-at-all", dbname="imagedb",
                    connect_timeout=5,
                ).close()  # fmt: skip
        lines = _logged(home / "pgdata", 'password authentication failed for user "bi_guessed"')
        assert len(lines) == 3 and all("client=127.0.0.1 user=bi_guessed db=imagedb " in line for line in lines)
        assert re.search(r"client=(\S+) .*password authentication failed", lines[0]).group(1) == "127.0.0.1"
    finally:
        stop_embedded(home)


def _hold(url: str, statements: list[str], ready: threading.Event, done: threading.Event) -> None:
    with psycopg.connect(url, application_name="lock-holder") as conn:
        for statement in statements:
            conn.execute(statement)
        ready.set()
        done.wait(60)
        conn.rollback()


def _while_held(url: str, statements: list[str]):  # type: ignore[no-untyped-def]
    ready, done = threading.Event(), threading.Event()
    thread = threading.Thread(target=_hold, args=(url, statements, ready, done), daemon=True)
    thread.start()
    assert ready.wait(30)
    return done, thread


@pytest.mark.slow
def test_an_owner_command_behind_a_writers_exclusive_lock_ends_naming_it(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _role("w")
    grant_writer(store, writer, PASSWORD)
    done, thread = _while_held(_login(database_url, writer), ["LOCK TABLE images IN ACCESS EXCLUSIVE MODE"])
    try:
        pid = store.conn.execute("SELECT pid FROM pg_stat_activity WHERE usename = %s", (writer,)).fetchone()[0]
        monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
        started = time.monotonic()
        result = CliRunner().invoke(main, ["db", "check"])
        took = time.monotonic() - started
    finally:
        done.set()
        thread.join()
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert LOCK_TIMEOUT_S <= took < LOCK_TIMEOUT_S + 10
    assert f"session {pid} (role '{writer}', application 'lock-holder'" in result.output
    assert "'LOCK TABLE images IN ACCESS EXCLUSIVE MODE'" in result.output
    assert f"SELECT pg_terminate_backend({pid})" in result.output


@pytest.mark.slow
def test_a_restore_behind_a_reader_idle_in_a_transaction_ends_naming_it_and_changes_nothing(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reader = _role("r")
    grant_reader(store, reader, PASSWORD)
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    dump = tmp_path / "before.dump"
    assert CliRunner().invoke(main, ["db", "dump", str(dump)]).exit_code == 0
    store.conn.execute("COMMENT ON TABLE images IS 'made after the dump'")
    done, thread = _while_held(_login(database_url, reader), ["SELECT count(*) FROM image_catalog"])
    try:
        pid = store.conn.execute("SELECT pid FROM pg_stat_activity WHERE usename = %s", (reader,)).fetchone()[0]
        started = time.monotonic()
        result = CliRunner().invoke(main, ["db", "restore", str(dump), "--yes"])
        took = time.monotonic() - started
    finally:
        done.set()
        thread.join()
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert took < LOCK_TIMEOUT_S + 20
    assert f"session {pid} (role '{reader}'" in result.output and "idle in transaction" in result.output
    assert "'SELECT count(*) FROM image_catalog'" in result.output
    comment = store.conn.execute("SELECT obj_description('images'::regclass)").fetchone()[0]
    assert comment == "made after the dump"  # the restore's single transaction was rolled back whole


@pytest.mark.slow
def test_an_api_request_behind_a_held_table_gets_a_503_not_a_hang(database_url: str) -> None:
    from fastapi.testclient import TestClient

    from imagedb.api import create_app

    client = TestClient(create_app(database_url), base_url="http://localhost")
    assert client.get("/api/collections").status_code == 200
    done, thread = _while_held(database_url, ["LOCK TABLE collections IN ACCESS EXCLUSIVE MODE"])
    try:
        started = time.monotonic()
        answer = client.get("/api/collections")
        took = time.monotonic() - started
    finally:
        done.set()
        thread.join()
    assert answer.status_code == 503 and "another session has held a table" in answer.json()["detail"]
    assert took < LOCK_TIMEOUT_S + 10
    assert client.get("/api/collections").status_code == 200


@pytest.mark.slow
def test_a_migration_behind_a_held_table_ends_naming_it(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _migrate(database_url, command.downgrade, _before("limits"))
    done, thread = _while_held(database_url, ["LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"])
    try:
        pid = store.conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'lock-holder'").fetchone()[
            0
        ]
        monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
        started = time.monotonic()
        result = CliRunner().invoke(main, ["db", "upgrade"])
        took = time.monotonic() - started
    finally:
        done.set()
        thread.join()
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert took < LOCK_TIMEOUT_S + 10 and f"SELECT pg_terminate_backend({pid})" in result.output
    assert store.conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == _before("limits")
    assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0


@pytest.mark.slow
def test_an_ingest_behind_a_held_table_ends_naming_it_and_a_rerun_completes(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch, photos: Path, tiny_model: str
) -> None:
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    first = CliRunner().invoke(main, ["ingest", str(photos / "coffee.jpg"), "--model", tiny_model])
    assert first.exit_code == 0, first.output
    writer = _role("w")
    grant_writer(store, writer, PASSWORD)
    done, thread = _while_held(_login(database_url, writer), ["LOCK TABLE images IN ACCESS EXCLUSIVE MODE"])
    try:
        pid = store.conn.execute("SELECT pid FROM pg_stat_activity WHERE usename = %s", (writer,)).fetchone()[0]
        started = time.monotonic()
        result = CliRunner().invoke(main, ["ingest", str(photos)])
        took = time.monotonic() - started
    finally:
        done.set()
        thread.join()
    assert result.exit_code == 1 and f"SELECT pg_terminate_backend({pid})" in result.output, result.output
    assert "Traceback" not in result.output and took < 2 * LOCK_TIMEOUT_S + 20
    again = CliRunner().invoke(main, ["ingest", str(photos)])
    assert again.exit_code == 0, again.output
    assert store.conn.execute("SELECT count(*) FROM images").fetchone()[0] == 12


@pytest.mark.slow
def test_an_owner_that_is_no_superuser_grants_and_is_told_which_limits_it_could_not_set(server_url: str) -> None:
    """A server of one's own, as docs/operations.md sets it up: imagedb's role owns the database, a superuser made
    the extension and the BI role. The migration and grant-* still work; what only an administrator may set is
    named."""
    name, owner, role = f"imagedb_plain_{os.getpid()}", "plain_limits_owner", "dba_made_reader"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        for r in (owner, role):
            conn.execute(f"DROP ROLE IF EXISTS {r}")
        conn.execute(f"CREATE ROLE {owner} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f"CREATE DATABASE {name} OWNER {owner}")
    with psycopg.connect(with_database(server_url, name), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    url = _login(with_database(server_url, name), owner)
    try:
        assert CliRunner().invoke(main, ["--database-url", url, "db", "upgrade"]).exit_code == 0
        result = CliRunner().invoke(main, ["--database-url", url, "grant-reader", role])
        assert result.exit_code == 0, result.output
        assert "may not set connection limit, statement_timeout, idle_in_transaction_session_timeout," in result.output
        assert "large objects and temporary tables" in result.output
        with psycopg.connect(_login(with_database(server_url, name), role), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM image_catalog").fetchone()[0] == 0
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
            conn.execute(f"DROP ROLE {role}")
            conn.execute(f"DROP ROLE {owner}")


@pytest.mark.slow
def test_an_ingest_behind_a_readers_advisory_lock_ends_naming_the_reader(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch, photos: Path, tiny_model: str
) -> None:
    """docs/bi.md: any login may take advisory locks, so a reader can hold the keys ingest's batches wait on."""
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    assert CliRunner().invoke(main, ["ingest", str(photos / "coffee.jpg"), "--model", tiny_model]).exit_code == 0
    reader = _role("r")
    grant_reader(store, reader, PASSWORD)
    collection = store.conn.execute("SELECT min(id) FROM collections").fetchone()[0]
    with psycopg.connect(_login(database_url, reader), autocommit=True, application_name="bi-lock") as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (0x1A6E, collection))  # store/images.py's batch-write key
        result = CliRunner().invoke(main, ["ingest", str(photos)])
        pid = holder.info.backend_pid
    assert result.exit_code == 1 and f"SELECT pg_terminate_backend({pid})" in result.output, result.output
    assert f"role '{reader}', application 'bi-lock'" in result.output


def test_limits_out_of_the_servers_range_are_refused_before_anything_is_granted(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = _role("r")
    with pytest.raises(InvalidInput, match="temporary-file limit"):
        grant_reader(store, role, PASSWORD, READER_LIMITS.adjusted(temp_file_limit_mb=1 << 30))
    assert store.conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0] == 0
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    largest = ["--temp-file-limit", str(MAX_TEMP_FILE_MB), "--statement-timeout", "86400", "--idle-timeout", "0"]
    made = CliRunner().invoke(main, ["grant-writer", role, "--password", PASSWORD, *largest])
    assert made.exit_code == 0, made.output
    assert _settings(store.conn, role)[1]["idle_in_transaction_session_timeout"] == "0s"
    too_big = CliRunner().invoke(main, ["grant-writer", role, "--temp-file-limit", str(MAX_TEMP_FILE_MB + 1)])
    assert too_big.exit_code == 2


def test_a_roles_oversized_session_defaults_are_found_by_check_and_removed_by_repair(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside attacks: a reader's `ALTER ROLE self SET search_path = <63 MB>` (any login may set its own defaults)
    grew the shared catalog by 63 MB a statement; repair then also put grant-*'s default limits over the operator's
    own (a connection limit of 3 became 20)."""
    role = _role("r")
    grant_reader(store, role, PASSWORD, READER_LIMITS.adjusted(connection_limit=3, statement_timeout_s=900))
    database = store.conn.execute("SELECT current_database()").fetchone()[0]
    with psycopg.connect(_login(database_url, role), autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {role} SET search_path = '{'a' * 100_000}'")
        conn.execute(f"ALTER ROLE {role} IN DATABASE {database} SET application_name = '{'b' * 50_000}'")
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    checked = CliRunner().invoke(main, ["db", "check"])
    assert checked.exit_code == 1 and f"role '{role}' (reader) stores 1" in checked.output, checked.output
    assert "imagedb db repair" in checked.output
    repaired = CliRunner().invoke(main, ["db", "repair"])
    assert repaired.exit_code == 0, repaired.output
    assert f"removed the session defaults role {role} set on itself (application_name, search_path)" in repaired.output
    limit, settings = _settings(store.conn, role)
    assert (limit, settings["statement_timeout"], settings["log_min_messages"]) == (3, "900s", "fatal")
    assert "search_path" not in settings
    here = store.conn.execute(
        "SELECT d.setconfig FROM pg_db_role_setting d JOIN pg_roles r ON r.oid = d.setrole"
        " WHERE r.rolname = %s AND d.setdatabase <> 0",
        (role,),
    ).fetchall()
    assert here == [(["log_min_messages=fatal", "log_min_error_statement=panic"],)]
    assert CliRunner().invoke(main, ["db", "check"]).exit_code == 0
