"""Bounds on what a reader's call can write to the server log: imagedb_search_text refuses a text over 10,000
characters (as imagedb_search_hybrid does) before any work, and `imagedb_internal.printable()`, which the error
handler of every reader-facing plpgsql function applies to its message and hint, shortens each quoted argument to
its first 100 characters and the whole message to 1,000, each cut marked with an ellipsis. A 50 MB argument was
echoed whole into the error, its hint and the server log, per call (docs/security.md).

Revision ID: bounds
Revises: textrecall
Create Date: 2026-12-07
"""

from alembic import op

revision = "bounds"
down_revision = "textrecall"
branch_labels = None
depends_on = None

SCHEMA = "imagedb_internal"
SEARCH_TEXT = "public.imagedb_search_text(text, text, integer, text)"
CAP = """
    IF length(query) > 10000 THEN  -- added by revision bounds
        RAISE EXCEPTION 'imagedb_search_text: the query has % characters, at most 10000', length(query);
    END IF;"""

# Control characters as \xNN, as before; first each quoted literal ('...', '' inside) past 100 characters is cut
# to 100 and an ellipsis, then the message past 1,000. Only the first 20,000 characters are read at all.
_ESCAPE = r"""
    SELECT CASE WHEN message !~ '[\x01-\x1f\x7f-\x9f]' THEN message ELSE (
        SELECT string_agg(CASE WHEN ch ~ '[\x01-\x1f\x7f-\x9f]' THEN '\x' || lpad(to_hex(ascii(ch)), 2, '0')
                               ELSE ch END, '' ORDER BY n)
        FROM generate_series(1, length(message)) n, substr(message, n, 1) ch) END"""
_BOUNDED = (
    f"CREATE OR REPLACE FUNCTION {SCHEMA}.printable(message text) RETURNS text"
    " LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog AS $$"
    " WITH cut AS (SELECT regexp_replace(left(message, 20000),"
    " '''((?:[^'']|''''){100})(?:[^'']|'''')+(''|$)', '''\\1…\\2', 'g') AS m),"
    " short AS (SELECT CASE WHEN length(m) > 1000 THEN left(m, 1000) || '…' ELSE m END AS message FROM cut)"
    f" {_ESCAPE.replace('FROM generate_series', 'FROM short, generate_series')} FROM short $$"
)
_PLAIN = (
    f"CREATE OR REPLACE FUNCTION {SCHEMA}.printable(message text) RETURNS text"
    f" LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog AS $$ {_ESCAPE} $$"
)


def _exec(statement: str) -> None:
    op.get_bind().exec_driver_sql(statement.replace("%", "%%"))


def _search_text(add: bool) -> None:
    row = (
        op.get_bind()
        .exec_driver_sql(
            f"SELECT prosrc, pg_get_functiondef(oid) FROM pg_proc WHERE oid = '{SEARCH_TEXT}'::regprocedure"
        )
        .fetchone()
    )
    assert row is not None
    source, definition = row
    if add and CAP not in source:
        start = source.index("BEGIN") + len("BEGIN")
        body = source[:start] + CAP + source[start:]
    elif not add:
        body = source.replace(CAP, "")
    else:
        return
    if body != source:
        _exec(definition.replace(source, body, 1))


def upgrade() -> None:
    _exec(_BOUNDED)
    _search_text(add=True)


def downgrade() -> None:
    _search_text(add=False)
    _exec(_PLAIN)
