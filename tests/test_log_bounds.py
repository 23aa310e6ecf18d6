"""What a login can add to the server log is bounded (docs/security.md): a reader's or writer's session writes no
error, warning or statement there (PostgreSQL's own messages echo values raw), imagedb_search_text refuses a text over
10,000 characters in one line, no error or hint of imagedb's echoes more than 100 characters of an argument, and the
embedded server's log is PostgreSQL's collector's, one file a weekday, each emptied when its day comes round."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from click.testing import CliRunner
from test_sql_readers import PASSWORD, login

from imagedb.cli import main
from imagedb.pg.cluster import LOG_DIRECTORY, server_defaults, write_defaults
from imagedb.roles import grant_reader, grant_writer
from imagedb.store import Store

# What PostgreSQL itself logs with the caller's bytes in it, raw: each was megabytes of log per statement.
_LOUD = (
    "SELECT repeat('B', 5000000)::int",  # a failed conversion echoes the value
    "SELECT * FROM imagedb_search_text('x', 'default', repeat('9', 3000000)::int)",  # the same through an argument
    "DO $$ BEGIN RAISE WARNING '%', repeat('W', 1000000); END $$",
    "DO $$ BEGIN RAISE LOG '%', repeat('L', 1000000); END $$",
    "SELECT 1 FROM " + "x" * 1_000_000,  # an error's statement is logged whole
    "SELECT 'line one\nforged line two'::int",  # a newline of the caller's
)


def _log_file(database_url: str) -> Path | None:
    """The collector's current file (the embedded server's, or another server's where it runs one), else pg_ctl's."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            row = conn.execute("SELECT current_setting('data_directory'), pg_current_logfile()").fetchone()
        except psycopg.Error:
            return None
    assert row is not None
    path = Path(row[0]) / (row[1] or "log")
    return path if path.is_file() else None


def test_a_reader_cannot_fill_the_log_through_an_argument(store: Store, database_url: str) -> None:
    role = f"bounds_reader_{os.getpid()}"
    grant_reader(store, role, PASSWORD)
    log = _log_file(database_url)
    before = log.stat().st_size if log else 0
    with psycopg.connect(login(database_url, role), autocommit=True) as conn:
        for _ in range(3):
            with pytest.raises(psycopg.errors.RaiseException) as info:
                conn.execute("SELECT * FROM imagedb_search_text(%s, 'default', 5)", ("b" * 1_000_000,))
            assert info.value.diag.message_primary == (
                "imagedb_search_text: the query has 1000000 characters, at most 10000"
            )
            assert info.value.diag.message_hint is None
        # the server builds the huge argument itself: the same bound
        with pytest.raises(psycopg.errors.RaiseException, match="at most 10000"):
            conn.execute("SELECT * FROM imagedb_search_text(repeat('b', 50000000), 'default', 5)")
        # a huge collection name, with a control byte: cut, escaped, one line
        for function in ("imagedb_search_text", "imagedb_search_hybrid"):
            with pytest.raises(psycopg.errors.RaiseException) as info:
                conn.execute(f"SELECT * FROM {function}('x', %s, 5)", ("\x01" + "n" * 2_000_000,))
            message = info.value.diag.message_primary or ""
            assert message.startswith(f"{function}: no collection named '\\x01" + "n" * 99 + "…")
            assert len(message) < 300 and "\n" not in message
    if log is not None:  # the 50 MB argument alone was 100 MB of log per call
        assert log.stat().st_size - before < 8_000


def test_printable_cuts_each_quoted_argument_and_the_whole_message(store: Store, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:

        def printable(text: str) -> str:
            return conn.execute("SELECT imagedb_internal.printable(%s)", (text,)).fetchone()[0]  # type: ignore[index]

        assert printable("no collection named 'it''s'") == "no collection named 'it''s'"
        long = "'" + "a" * 150 + "' and '" + "b''" * 60 + "' end"
        assert printable(long) == "'" + "a" * 100 + "…' and '" + "b''" * 50 + "…' end"
        assert printable("'" + "z" * 10_000) == "'" + "z" * 100 + "…"  # cut before its closing quote
        assert printable("w" * 5_000) == "w" * 1000 + "…"
        assert printable("bell\x07") == "bell\\x07"


def test_a_readers_or_writers_session_writes_no_value_of_theirs_to_the_log(store: Store, database_url: str) -> None:
    reader, writer = f"quiet_reader_{os.getpid()}", f"quiet_writer_{os.getpid()}"
    grant_reader(store, reader, PASSWORD)
    grant_writer(store, writer, PASSWORD)
    log = _log_file(database_url)
    if log is None:
        pytest.skip("the server's log is not readable here")
    before = log.stat().st_size
    for role in (reader, writer):
        with psycopg.connect(login(database_url, role), autocommit=True) as conn:
            for statement in _LOUD:
                try:
                    conn.execute(statement)
                except psycopg.Error:
                    pass
                assert conn.execute("SELECT 1").fetchone() == (1,)
    database = store.conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    with psycopg.connect(login(database_url, reader), autocommit=True) as conn:  # a bad default of its own, here
        bad = "default_text_search_config = E'x\\nforged line two'"
        conn.execute(f"ALTER ROLE {reader} IN DATABASE {database} SET {bad}")
    psycopg.connect(login(database_url, reader)).close()  # logged as a WARNING at each login, before fatal held
    with psycopg.connect(database_url, autocommit=True) as conn:  # the owner's errors are still logged
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute("SELECT 'owner-marker-in-the-log'::int")
        written = _log_file(database_url)
    assert written == log  # the same file: no rotation in between
    grown = log.read_bytes()[before:].decode(errors="replace")
    assert "owner-marker-in-the-log" in grown  # so the log was read where the server writes it
    assert len(grown) < 8_000, grown[:500]
    assert "BBBB" not in grown and "WWWW" not in grown and "LLLL" not in grown and "forged line two" not in grown


def test_the_migration_quiets_roles_made_before_it(store: Store, database_url: str) -> None:
    from alembic import command
    from test_role_limits import _migrate, _settings

    role = f"old_reader_{os.getpid()}"
    grant_reader(store, role, PASSWORD)
    assert _settings(store.conn, role)[1]["log_min_messages"] == "fatal"
    _migrate(database_url, command.downgrade, "bounds")
    assert "log_min_messages" not in _settings(store.conn, role)[1]
    _migrate(database_url, command.upgrade, "head")
    settings = _settings(store.conn, role)[1]
    assert (settings["log_min_messages"], settings["log_min_error_statement"]) == ("fatal", "panic")


def test_the_embedded_server_logs_through_the_collector_one_file_a_weekday(server_url: str) -> None:
    """And it gets its other defaults from its first start: shared buffers sized to the machine."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('logging_collector', 'log_directory',"
                " 'log_filename', 'log_rotation_age', 'log_rotation_size', 'log_truncate_on_rotation')"
            ).fetchall()
        )
        current = conn.execute("SELECT pg_current_logfile()").fetchone()[0]  # type: ignore[index]
        buffers = conn.execute(
            "SELECT setting::bigint * 8192 FROM pg_settings WHERE name = 'shared_buffers'"
        ).fetchone()
    if settings["logging_collector"] != "on" and os.environ.get("IMAGEDB_TEST_DATABASE_URL"):
        pytest.skip("another server: its log is its administrator's")
    assert settings == {
        "logging_collector": "on",
        "log_directory": LOG_DIRECTORY,
        "log_filename": "postgresql-%a.log",
        "log_rotation_age": "1440",  # minutes: a day
        "log_rotation_size": "0",
        "log_truncate_on_rotation": "on",
    }
    assert current.startswith(f"{LOG_DIRECTORY}/postgresql-") and current.endswith(".log")
    assert buffers == (int(server_defaults()["shared_buffers"].removesuffix("MB")) << 20,)
    assert 128 << 20 <= buffers[0] <= 8 << 30
    home = Path(parse_qs(urlsplit(server_url).query)["passfile"][0]).parent
    info = CliRunner(env={"IMAGEDB_DATABASE_URL": None}).invoke(main, ["--home", str(home), "db", "info"])
    assert info.exit_code == 0, info.output
    assert f"log: {home / 'pgdata' / current} (the collector's file of today" in info.output


def test_server_defaults_leave_an_operators_settings_and_are_written_once(tmp_path: Path) -> None:
    auto, conf = tmp_path / "postgresql.auto.conf", tmp_path / "postgresql.conf"
    auto.write_text("# Do not edit this file manually!\nlog_directory='mine'")
    conf.write_text("max_connections = 100\nshared_buffers = 300MB\t\t\t# min 128kB\n#logging_collector = off\n")
    write_defaults(tmp_path)
    written = auto.read_text()
    assert "shared_buffers" not in written  # the operator's 300MB in postgresql.conf stays
    assert "log_directory='mine'" in written and written.count("log_directory") == 1
    assert "\nlogging_collector = 'on'\n" in written and "log_filename = 'postgresql-%a.log'" in written
    write_defaults(tmp_path)
    assert auto.read_text() == written
    # An operator's ALTER SYSTEM RESET sticks: a setting is written once (a third outside attack: it came back).
    auto.write_text(written.replace("logging_collector = 'on'\n", ""))
    write_defaults(tmp_path)
    assert "logging_collector" not in auto.read_text()
    # initdb's own 128MB is no one's choice: imagedb's value is written over it.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "postgresql.auto.conf").write_text("# Do not edit this file manually!\n")
    (fresh / "postgresql.conf").write_text("shared_buffers = 128MB\t\t\t# min 128kB\n")
    write_defaults(fresh)
    assert f"shared_buffers = '{server_defaults()['shared_buffers']}'" in (fresh / "postgresql.auto.conf").read_text()
