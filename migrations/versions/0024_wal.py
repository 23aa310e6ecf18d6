"""Readers and writers may not write WAL or take transaction ids at will.

PostgreSQL lets every role run pg_logical_emit_message, which writes WAL of any size (a reader wrote 3.8 GB in
9 s, past a running replica's `--max-wal`, whose slot PostgreSQL then dropped), and pg_current_xact_id /
txid_current, which take a transaction id each call (235,000 a second from one reader: anti-wraparound vacuums every
few minutes). Where imagedb's role is a superuser (the embedded server), they are refused to PUBLIC in this
database, every signature the server has, as revision `limits` refused large objects; imagedb's code takes no
transaction id but by writing (`forget` asks pg_current_xact_id_if_assigned).

Revision ID: wal
Revises: snapshots
Create Date: 2026-12-07
"""

from alembic import op

revision = "wal"
down_revision = "snapshots"
branch_labels = None
depends_on = None

# imagedb/pg/limits.py's REFUSED_FUNCTIONS added by this revision, spelled out: a migration must not change with the
# code.
_NAMES = "'pg_logical_emit_message', 'pg_current_xact_id', 'txid_current'"


def _statement(grant: bool) -> str:
    verb = "GRANT EXECUTE ON FUNCTION %s TO PUBLIC" if grant else "REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC"
    return f"""
DO $imagedb_wal$
DECLARE f text;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RETURN;  -- the server's administrator decides (docs/security.md)
    END IF;
    FOR f IN SELECT oid::regprocedure::text FROM pg_proc
             WHERE proname IN ({_NAMES}) AND pronamespace = 'pg_catalog'::regnamespace
    LOOP
        EXECUTE format('{verb}', f);
    END LOOP;
END $imagedb_wal$
"""


def upgrade() -> None:
    op.execute(_statement(grant=False))


def downgrade() -> None:
    op.execute(_statement(grant=True))
