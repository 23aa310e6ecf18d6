"""grant-reader / grant-writer against an outside attack: a replica's login, a writer turned reader, weak passwords
of the commonest shapes, and `db dump` behind a writer's exclusive lock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_role_limits import PASSWORD, _login, _role, _while_held

from imagedb.cli import main
from imagedb.errors import InvalidInput
from imagedb.pg.limits import LOCK_TIMEOUT_S
from imagedb.roles import checked_password, grant_reader, grant_writer
from imagedb.store import Store


def _password_hash(store: Store, role: str) -> str | None:
    return store.conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()[0]


def test_grant_refuses_a_replication_role_and_changes_nothing(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = f"streamer_{_role('x')}"  # a replication role of the administrator's, named as they like
    store.conn.execute(f"CREATE ROLE {role} WITH REPLICATION LOGIN PASSWORD 'the-replicas-own-pw'")
    before = _password_hash(store, role)
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    for command in ("grant-writer", "grant-reader"):
        result = CliRunner().invoke(main, [command, role, "--password", PASSWORD])
        assert result.exit_code == 2, result.output
        assert "REPLICATION attribute (a replica's login)" in result.output.splitlines()[-1]
    assert _password_hash(store, role) == before
    assert store.conn.execute("SELECT has_table_privilege(%s, 'images', 'SELECT')", (role,)).fetchone() == (False,)
    store.conn.execute(f"DROP ROLE {role}")  # what `db replica remove` does: nothing granted stands in its way


def test_grant_refuses_names_postgresql_would_change_or_never_let_in(store: Store) -> None:
    """A second outside attack: a 100-character name was cut to 63 without a word, a name with a newline or a
    password with one (which no password file can hold) was taken, and `imagedb_replica_evil` made a login that
    pg_hba.conf keeps off every database."""
    for role, said in (
        ("r" * 64, "1 to 63 bytes"),
        ("é" * 32, "1 to 63 bytes"),  # 64 bytes
        ("", "1 to 63 bytes"),
        ("bi\nreader", "control characters"),
        ("imagedb_replica_evil", "replicas'"),
        ("pg_reader", "PostgreSQL's"),
        ("public", "reserves"),
        ("None", "reserves"),
        ("a\udcffb", "UTF-8"),  # a non-UTF-8 byte on the command line (a traceback before)
    ):
        with pytest.raises(InvalidInput, match=said):
            grant_reader(store, role, PASSWORD)
    for password in ("plum kettle\norbit one", "plum kettle\torbit one", "plum kettle\x7forbit one"):
        with pytest.raises(InvalidInput, match="control characters"):
            grant_writer(store, _role("w"), password)
    with pytest.raises(InvalidInput, match="UTF-8"):
        grant_writer(store, _role("w"), "plum kettle \udcff orbit one")
    assert grant_reader(store, "é" * 31, PASSWORD).created  # 62 bytes: kept whole
    assert store.conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", ("é" * 31,)).fetchone() == (1,)


def test_grant_reader_refuses_a_writer_and_grant_writer_says_a_reader_became_one(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, reader = _role("w"), _role("r")
    grant_writer(store, writer, PASSWORD)
    with pytest.raises(InvalidInput, match="is a writer .* drop it first"):
        grant_reader(store, writer)
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    refused = CliRunner().invoke(main, ["grant-reader", writer])
    assert refused.exit_code == 2 and "drop it first" in refused.output.splitlines()[-1], refused.output
    update = "SELECT has_table_privilege(%s, 'imagedb_internal.embeddings', 'UPDATE')"
    assert store.conn.execute(update, (writer,)).fetchone() == (True,)
    grant_reader(store, reader, PASSWORD)
    again = CliRunner().invoke(main, ["grant-reader", reader])
    assert again.exit_code == 0 and f"updated role {reader}" in again.output  # a reader stays one
    promoted = CliRunner().invoke(main, ["grant-writer", reader])
    assert promoted.exit_code == 0, promoted.output
    assert f"made role {reader} (a reader or plain role until now) a writer" in promoted.output
    assert store.conn.execute(update, (reader,)).fetchone() == (True,)
    rerun = CliRunner().invoke(main, ["grant-writer", reader])
    assert f"updated role {reader}: read and write" in rerun.output


def test_common_password_shapes_are_refused() -> None:
    for weak, role in [
        ("123456789012", "bi"),
        ("password1234", "bi"),
        ("qwertyuiop12", "bi"),
        ("imagedb12345", "bi"),
        ("esabatem1234", "metabase"),
        ("Welcome2026!!", "bi"),
        ("987654321098", "bi"),
        ("asdfghjkl123", "bi"),
        # l33t, a season and year, a keyboard walk two rows at a time (a second outside attack)
        ("Passw0rd!!!!!", "bi"),
        ("Summer2026!!!", "bi"),
        ("1q2w3e4r5t6y", "bi"),
        ("P@ssw0rd2026!", "bi"),
        ("metabase-metabase-1", "metabase"),
    ]:
        with pytest.raises(InvalidInput):
            checked_password(weak, role)
    for good in ("correct horse battery", "xK9_vQ2m#pL7", "a-limited-login-pw", "long enough to pass"):
        assert checked_password(good, "metabase") == good


@pytest.mark.slow
def test_a_dump_behind_a_writers_exclusive_lock_names_the_session(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    writer = _role("w")
    grant_writer(store, writer, PASSWORD)
    done, thread = _while_held(_login(database_url, writer), ["LOCK TABLE images IN ACCESS EXCLUSIVE MODE"])
    try:
        pid = store.conn.execute("SELECT pid FROM pg_stat_activity WHERE usename = %s", (writer,)).fetchone()[0]
        monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
        started = time.monotonic()
        result = CliRunner().invoke(main, ["db", "dump", str(tmp_path / "x.dump")])
        took = time.monotonic() - started
    finally:
        done.set()
        thread.join()
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert took < LOCK_TIMEOUT_S + 15
    assert f"session {pid} (role '{writer}'" in result.output
    assert f"SELECT pg_terminate_backend({pid})" in result.output
    assert not list(tmp_path.iterdir())


def test_grant_refuses_a_role_with_powers_beyond_what_it_gives(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "reader" in pg_read_all_data read every internal table; one with CREATEROLE made logins: grant-* said
    "updated role" for both (found by an outside attack)."""
    member, maker, bypass = _role("m"), _role("c"), _role("b")
    store.conn.execute(f"CREATE ROLE {member} LOGIN; GRANT pg_read_all_data TO {member}")
    store.conn.execute(f"CREATE ROLE {maker} LOGIN CREATEROLE")
    store.conn.execute(f"CREATE ROLE {bypass} LOGIN BYPASSRLS CREATEDB")
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    for role, said in ((member, "membership in pg_read_all_data"), (maker, "CREATEROLE"), (bypass, "BYPASSRLS")):
        for command in ("grant-reader", "grant-writer"):
            result = CliRunner().invoke(main, [command, role, "--password", PASSWORD])
            assert result.exit_code == 2, result.output
            assert said in result.output.splitlines()[-1] and "nothing was changed" in result.output
        assert _password_hash(store, role) is None
        select = "SELECT has_table_privilege(%s, 'image_catalog', 'SELECT')"
        assert store.conn.execute(select, (role,)).fetchone() == (role == member,)  # pg_read_all_data reads it
