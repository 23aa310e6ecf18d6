"""Readers and writers made before `grant-*` set it write nothing but FATAL lines to the server log.

PostgreSQL logs a failed conversion with its value, raw, before any of imagedb's code runs: one reader's
`SELECT repeat('x', 5000000)::int` added 5 MB to the log, and RAISE WARNING writes what the caller chooses. Each
reader and writer (found as the revision `limits` finds them) gets log_min_messages = fatal and
log_min_error_statement = panic, which only a superuser may set: elsewhere they are left to the server's
administrator, and docs/security.md says how.

Revision ID: quietlog
Revises: bounds
Create Date: 2026-12-07
"""

from alembic import op

revision = "quietlog"
down_revision = "bounds"
branch_labels = None
depends_on = None

# imagedb/pg/limits.py's QUIET_LOG, spelled out: a migration must not change with the code.
_QUIET = {"log_min_messages": "fatal", "log_min_error_statement": "panic"}

_ROLES = """
SELECT DISTINCT grantee FROM information_schema.role_table_grants
WHERE table_schema IN ('public', 'imagedb_internal') AND grantee NOT IN (current_user, 'PUBLIC')
  AND ((privilege_type = 'INSERT' AND table_name = 'embeddings')
       OR (privilege_type = 'SELECT' AND table_name = 'image_catalog'))
ORDER BY grantee
"""


def _roles() -> list[str]:
    return [r[0] for r in op.get_bind().exec_driver_sql(_ROLES)]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _superuser() -> bool:
    return bool(
        op.get_bind().exec_driver_sql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").scalar_one()
    )


def upgrade() -> None:
    if not _superuser():
        return
    database = _ident(op.get_bind().exec_driver_sql("SELECT current_database()").scalar_one())
    for role in _roles():
        for name, value in _QUIET.items():
            op.execute(f"ALTER ROLE {_ident(role)} SET {name} = '{value}'")
            # In this database too, where a role's own settings apply first (a bad one was logged at each login).
            op.execute(f"ALTER ROLE {_ident(role)} IN DATABASE {database} SET {name} = '{value}'")


def downgrade() -> None:
    if not _superuser():
        return
    database = _ident(op.get_bind().exec_driver_sql("SELECT current_database()").scalar_one())
    for role in _roles():
        for name in _QUIET:
            op.execute(f"ALTER ROLE {_ident(role)} RESET {name}")
            op.execute(f"ALTER ROLE {_ident(role)} IN DATABASE {database} RESET {name}")
