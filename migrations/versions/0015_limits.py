"""Limits for the roles imagedb granted to before they were set by `grant-reader` and `grant-writer`.

Each reader and writer (found, as the revisions `upgrade` and `readers` find them, by SELECT on image_catalog and
INSERT on embeddings) gets the defaults `grant-*` give today: a statement timeout (60 s for a reader, 300 s for a
writer), an idle-in-transaction timeout of 60 s, at most 20 connections and 1 GB of temporary files per session.
Where imagedb's role is a superuser (the embedded server), creating large objects and temporary tables is refused
to every other role of this database. docs/security.md says why each value.

Revision ID: limits
Revises: internal
Create Date: 2026-12-07
"""

from alembic import op

revision = "limits"
down_revision = "internal"
branch_labels = None
depends_on = None

# imagedb/pg/limits.py's defaults, spelled out: a migration must not change with the code.
_READER = {"statement_timeout": "60s", "idle_in_transaction_session_timeout": "60s", "temp_file_limit": "1024MB"}
_WRITER = {"statement_timeout": "300s", "idle_in_transaction_session_timeout": "60s", "temp_file_limit": "1024MB"}
_CONNECTION_LIMIT = 20
_LARGE_OBJECTS = "lo_creat(integer), lo_create(oid), lo_from_bytea(oid, bytea), lo_import(text), lo_import(text, oid)"

_ROLES = """
SELECT DISTINCT grantee FROM information_schema.role_table_grants
WHERE table_schema IN ('public', 'imagedb_internal') AND privilege_type = '{privilege}' AND table_name = '{table}'
  AND grantee NOT IN (current_user, 'PUBLIC')
"""


def _roles(privilege: str, table: str) -> list[str]:
    rows = op.get_bind().exec_driver_sql(_ROLES.format(privilege=privilege, table=table))
    return [r[0] for r in rows]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _superuser() -> bool:
    return bool(
        op.get_bind().exec_driver_sql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").scalar_one()
    )


def _try(statement: str) -> None:
    """Run a role statement unless imagedb's role may not (no CREATEROLE, or not a superuser for temp_file_limit):
    then the role keeps its settings, and `imagedb grant-*` says which it could not set."""
    op.execute(
        f"DO $imagedb_limits$ BEGIN {statement}; EXCEPTION WHEN insufficient_privilege THEN"
        f" RAISE NOTICE 'not set: %', SQLERRM; END $imagedb_limits$"
    )


def upgrade() -> None:
    superuser = _superuser()
    writers = set(_roles("INSERT", "embeddings"))
    readers = set(_roles("SELECT", "image_catalog")) - writers
    for roles, settings in ((readers, _READER), (writers, _WRITER)):
        for role in sorted(roles):
            _try(f"ALTER ROLE {_ident(role)} CONNECTION LIMIT {_CONNECTION_LIMIT}")
            for name, value in settings.items():
                _try(f"ALTER ROLE {_ident(role)} SET {name} = '{value}'")
    if superuser:
        database = op.get_bind().exec_driver_sql("SELECT current_database()").scalar_one()
        op.execute(f"REVOKE EXECUTE ON FUNCTION {_LARGE_OBJECTS} FROM PUBLIC")
        op.execute(f"REVOKE TEMPORARY ON DATABASE {_ident(database)} FROM PUBLIC")


def downgrade() -> None:
    writers = set(_roles("INSERT", "embeddings"))
    for role in sorted(writers | set(_roles("SELECT", "image_catalog"))):
        _try(f"ALTER ROLE {_ident(role)} CONNECTION LIMIT -1")
        for name in _READER:
            _try(f"ALTER ROLE {_ident(role)} RESET {name}")
    if _superuser():
        database = op.get_bind().exec_driver_sql("SELECT current_database()").scalar_one()
        # lo_import is the server's file reader: PUBLIC never had it.
        op.execute("GRANT EXECUTE ON FUNCTION lo_creat(integer), lo_create(oid), lo_from_bytea(oid, bytea) TO PUBLIC")
        op.execute(f"GRANT TEMPORARY ON DATABASE {_ident(database)} TO PUBLIC")
