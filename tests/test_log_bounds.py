"""What a reader's call can add to the server log is bounded (docs/security.md): imagedb_search_text refuses a
text over 10,000 characters in one line, and no error or hint echoes more than 100 characters of an argument."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from test_sql_readers import PASSWORD, login

from imagedb.roles import grant_reader
from imagedb.store import Store


def _log_file(database_url: str) -> Path | None:
    """The embedded server's log (pg_ctl -l pgdata/log), or the collector's file on another server."""
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
