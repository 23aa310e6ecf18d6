"""imagedb's tables move to the schema `imagedb_internal`, which readers have no USAGE on; the views and SQL
functions readers use stay in `public`. A reader's psql `\\dt`, JDBC `getTables(null, "public", ...)` and
`information_schema.tables` then list only what it can read (docs/bi.md has the measurements).

- Every base table of `public` (and standalone sequence) that is not an extension's moves, found from the catalog,
  not from a list: tables added by migrations before this one move too. Views, functions and the `vector` extension
  stay. Owned sequences and indexes move with their tables; views refer to tables by oid and follow them.
- `ALTER DATABASE ... SET search_path = imagedb_internal, public` (when this login may) lets the owner and writers
  keep writing `FROM embeddings`; a reader's search path skips a schema it has no USAGE on. imagedb's own
  connections set the same path themselves (imagedb/pg/connection.py), so they need no database setting, and
  tables made by later migrations land in `imagedb_internal`. Roles granted anything on a moved table (writers)
  get USAGE on it.
- The SECURITY DEFINER functions: `public.TABLE` in their bodies becomes `imagedb_internal.TABLE`, their pinned
  search_path gains `imagedb_internal` before `public`, and the plpgsql ones that readers call re-raise their own
  errors under their own name (imagedb_similar's said `imagedb_nearest:` for a bad metric or ef_search) with
  control characters shown as `\\xNN` (a name or query holding a control byte was echoed raw into the message).

Revision ID: internal
Revises: readers
Create Date: 2026-12-07
"""

import re

from alembic import op

revision = "internal"
down_revision = "cache"
branch_labels = None
depends_on = None

SCHEMA = "imagedb_internal"
PRINTABLE = f"{SCHEMA}.printable(text)"

_MOVABLE = """
SELECT c.relname, c.relkind FROM pg_class c
WHERE c.relnamespace = '{source}'::regnamespace AND c.relkind IN ('r', 'p', 'S')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND (d.deptype = 'e' OR (c.relkind = 'S' AND d.deptype IN ('a', 'i'))))
ORDER BY c.relkind DESC, c.relname
"""

# imagedb's own functions (not an extension's) in public that run with a pinned search_path.
_FUNCTIONS = """
SELECT p.oid::regprocedure::text, p.prosrc, pg_get_functiondef(p.oid), l.lanname,
       (SELECT s FROM unnest(p.proconfig) s WHERE s LIKE 'search\\_path=%')
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'e')
  AND (p.prosecdef OR p.proconfig IS NOT NULL)
ORDER BY 1
"""

_PRINTABLE = rf"""
CREATE FUNCTION {SCHEMA}.printable(message text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog AS $$
    SELECT CASE WHEN message !~ '[\x01-\x1f\x7f-\x9f]' THEN message ELSE (
        SELECT string_agg(CASE WHEN ch ~ '[\x01-\x1f\x7f-\x9f]' THEN '\x' || lpad(to_hex(ascii(ch)), 2, '0')
                               ELSE ch END, '' ORDER BY n)
        FROM generate_series(1, length(message)) n, substr(message, n, 1) ch) END
$$
"""
_PRINTABLE_COMMENT = rf"""
COMMENT ON FUNCTION {PRINTABLE} IS 'The text with each control character (U+0001..U+001F, U+007F..U+009F) written '
    'as \xNN, for error messages that echo an argument.';
"""

# Appended as the outer block's exception handler of each reader-facing plpgsql function: NAME is the function.
_HANDLER = f"""
EXCEPTION WHEN raise_exception THEN
    DECLARE
        imagedb_message text;
        imagedb_hint text;
    BEGIN  -- added by revision internal: errors under this function's name, control characters escaped
        GET STACKED DIAGNOSTICS imagedb_message = MESSAGE_TEXT, imagedb_hint = PG_EXCEPTION_HINT;
        imagedb_message := {SCHEMA}.printable(regexp_replace(imagedb_message, '^imagedb_[a-z_]+:', 'NAME:'));
        IF coalesce(imagedb_hint, '') = '' THEN
            RAISE EXCEPTION USING MESSAGE = imagedb_message;
        END IF;
        RAISE EXCEPTION USING MESSAGE = imagedb_message, HINT = {SCHEMA}.printable(imagedb_hint);
    END;
"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _rows(query: str) -> list[tuple]:  # type: ignore[type-arg]
    return [tuple(r) for r in op.get_bind().exec_driver_sql(query.replace("%", "%%")).fetchall()]


def _exec(statement: str) -> None:
    """Run a statement as written: no bind parameters (a function body may hold `:name` or `%`)."""
    op.get_bind().exec_driver_sql(statement.replace("%", "%%"))


def _set_path(path: str) -> None:
    """The session's search_path for the rest of this migration run (later revisions create in the first one)."""
    op.get_bind().exec_driver_sql(f"SELECT set_config('search_path', {_quote(path)}, false)")


def _database_path(path: str | None) -> None:
    """ALTER DATABASE ... SET search_path, where this login may (the owner of the database or a superuser)."""
    may = _rows(
        "SELECT pg_has_role(current_user, d.datdba, 'MEMBER') OR r.rolsuper FROM pg_database d, pg_roles r"
        " WHERE d.datname = current_database() AND r.rolname = current_user"
    )
    if may and may[0][0]:
        database = _ident(_rows("SELECT current_database()")[0][0])
        _exec(f"ALTER DATABASE {database} " + (f"SET search_path = {path}" if path else "RESET search_path"))


def _move(source: str, target: str) -> list[str]:
    """Move the base tables and standalone sequences of `source` to `target`; the names of all that moved (their
    indexes and owned sequences with them), for requalifying function bodies."""
    for name, kind in _rows(_MOVABLE.format(source=source)):
        what = "SEQUENCE" if kind == "S" else "TABLE"
        _exec(f"ALTER {what} {_ident(source)}.{_ident(name)} SET SCHEMA {_ident(target)}")
    return [name for (name,) in _rows(f"SELECT relname FROM pg_class WHERE relnamespace = '{target}'::regnamespace")]


def _rewrite_functions(tables: list[str], source: str, target: str, handler: bool) -> None:
    """Requalify `source.TABLE` as `target.TABLE` in imagedb's pinned functions, put `target` in (or take it out of)
    their pinned search_path, and add (or remove) the error handler of the reader-facing plpgsql ones."""
    qualified = re.compile(r"\b" + re.escape(source) + r'\.("?)(' + "|".join(map(re.escape, tables)) + r")\1\b")
    for signature, source_text, definition, language, path in _rows(_FUNCTIONS):
        body = qualified.sub(lambda m: f"{target}.{m.group(2)}", source_text) if tables else source_text
        name = signature.split("(", 1)[0]
        mine = _HANDLER.replace("NAME", name)
        if language == "plpgsql" and name.startswith("imagedb_"):
            if handler and mine not in body:
                closing = re.search(r"\bEND\s*;?\s*$", body)
                assert closing is not None, f"{name}: no closing END"
                body = body[: closing.start()] + mine + "END\n"
            elif not handler:
                body = body.replace(mine, "")
        if body != source_text:
            _exec(definition.replace(source_text, body, 1))
        if path is not None:
            given = [s.strip() for s in path.split("=", 1)[1].split(",") if s.strip()]
            schemas = [s for s in given if s.strip('"') != SCHEMA]
            if handler and "public" in schemas:
                schemas.insert(schemas.index("public"), SCHEMA)
            if schemas != given:  # a path without public (or an empty one) is the function's own business
                _exec(f"ALTER FUNCTION {signature} SET search_path = {', '.join(schemas)}")


def upgrade() -> None:
    _exec(f"CREATE SCHEMA {SCHEMA}")
    _exec(f"REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC")
    _exec(
        f"COMMENT ON SCHEMA {SCHEMA} IS 'imagedb''s tables: vectors, thumbnails, raw metadata. Readers (grant-reader)"
        " have no access and use the views and functions in public; writers (grant-writer) and the owner have it in"
        " their search_path.'"
    )
    moved = _move("public", SCHEMA)
    grantees = _rows(
        f"SELECT DISTINCT a.grantee::regrole::text FROM pg_class c, aclexplode(c.relacl) a"
        f" WHERE c.relnamespace = '{SCHEMA}'::regnamespace AND a.grantee <> 0 AND a.grantee <> c.relowner"
    )
    for (grantee,) in grantees:
        _exec(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {grantee}")  # regrole::text is quoted as needed
    _exec(_PRINTABLE)
    _exec(_PRINTABLE_COMMENT)
    _rewrite_functions(moved, "public", SCHEMA, handler=True)
    _database_path(f"{SCHEMA}, public")
    _set_path(f"{SCHEMA}, public")


def downgrade() -> None:
    _set_path("public")
    moved = _move(SCHEMA, "public")
    _rewrite_functions(moved, SCHEMA, "public", handler=False)
    _exec(f"DROP FUNCTION {PRINTABLE}")
    _database_path(None)
    _exec(f"DROP SCHEMA {SCHEMA}")
