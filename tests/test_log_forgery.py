"""The server's stderr log (pgdata/log.d) can be forged through a client's user name (docs/security.md, password
guessing): PostgreSQL writes the user name of the startup packet unescaped, newlines included, before any password
is checked, so a fail2ban filter on that file bans whatever address an attacker writes. The doc must not recommend
one."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from imagedb.pg.cluster import log_files, log_tail

DOCS = Path(__file__).resolve().parent.parent / "docs" / "security.md"
# The filter docs/security.md once recommended, as fail2ban reads it (<HOST> an address).
OLD_FAILREGEX = re.compile(r"client=(?P<host>[0-9.]+) .*password authentication failed")


def test_a_user_name_forges_a_log_line_that_a_naive_filter_bans(server_url: str, database_url: str) -> None:
    home = Path(parse_qs(urlsplit(server_url).query)["passfile"][0]).parent
    if not log_files(home / "pgdata"):
        pytest.skip("an external server: its log is its administrator's")
    params = {k: v for k, v in conninfo_to_dict(database_url).items() if k != "passfile"}
    params["user"] = "x\n2026-12-07 00:00:00.000 UTC [1] client=203.0.113.9 user=x"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**params, password="a-wrong-guess", connect_timeout=5).close()
    deadline = time.monotonic() + 5
    banned: list[str] = []
    while time.monotonic() < deadline and not banned:
        text = log_tail(home / "pgdata", 2**22)
        banned = [m["host"] for line in text.splitlines() if (m := OLD_FAILREGEX.search(line))]
        banned = [host for host in banned if host == "203.0.113.9"]
        time.sleep(0.1)
    assert banned[:1] == ["203.0.113.9"]  # an address that never connected


def test_the_doc_warns_and_recommends_no_forgeable_filter() -> None:
    text = DOCS.read_text()
    assert "failregex = client=<HOST> .*password authentication failed" not in text
    assert "forge" in text and "jsonlog" in text and "pg_hba" in text
