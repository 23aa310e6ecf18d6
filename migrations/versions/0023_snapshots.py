"""Writers see every session whose snapshot keeps what `forget` deleted: `imagedb_older_snapshot(xid8)`.

`forget` asks which session's snapshot or transaction is older than its deletion (VACUUM keeps the rows such a
session may still see, and VACUUM FULL copies them into the new files). pg_stat_activity shows another role's
snapshot only to a superuser or a member of pg_read_all_stats, so a writer's `forget --full` said "forgot" while a
reader's REPEATABLE READ kept the rows. The question is now a function that runs as its owner (imagedb's role)
and that writers may call; it returns a session's pid, role, application and seconds in its transaction, never its
query. Readers may not call it (REVOKE from PUBLIC); writers get it like the other functions in `public`. An
autovacuum worker's ANALYZE counts (its snapshot holds deleted rows as a session's does; the check skipped every
autovacuum worker, and an outside attack had `forget --full` say "forgot" behind one); a plain autovacuum VACUUM
does not, as PostgreSQL ignores its snapshot.

Revision ID: snapshots
Revises: textef
Create Date: 2026-12-07
"""

from alembic import op

revision = "snapshots"
down_revision = "textef"
branch_labels = None
depends_on = None

FUNCTION = "public.imagedb_older_snapshot(xid8)"

_CREATE = rf"""
CREATE FUNCTION {FUNCTION}
RETURNS TABLE (pid integer, role text, application text, seconds integer)
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog AS $$
    -- Autovacuum's ANALYZE too; only a plain (lazy) VACUUM's snapshot holds nothing back.
    (SELECT a.pid, coalesce(a.usename::text, a.backend_type),
            CASE WHEN a.backend_type = 'autovacuum worker' THEN a.query ELSE a.application_name END,
            extract(epoch FROM now() - a.xact_start)::int
     FROM pg_stat_activity a
     WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
       AND NOT (a.backend_type = 'autovacuum worker' AND a.query NOT LIKE '%ANALYZE%')
       AND (age(a.backend_xmin) > age(xid($1)) OR age(a.backend_xid) > age(xid($1)))
     ORDER BY a.xact_start NULLS LAST LIMIT 1)
    -- A replica's slot: its standby's oldest snapshot, sent back by hot_standby_feedback, holds them too.
    UNION ALL
    (SELECT NULL, s.slot_name::text, 'replica', NULL FROM pg_replication_slots s
     WHERE s.xmin IS NOT NULL AND age(s.xmin) > age(xid($1)) ORDER BY age(s.xmin) DESC)
    LIMIT 1
$$;
REVOKE ALL ON FUNCTION {FUNCTION} FROM PUBLIC;
COMMENT ON FUNCTION {FUNCTION} IS
    'A session of this database (pid, role, application, seconds in its transaction) whose snapshot or transaction'
    ' is older than the transaction id given, else a replica slot (NULL, slot, ''replica'', NULL) holding as old a'
    ' snapshot; no row when there is neither. imagedb forget asks it: such a snapshot keeps deleted rows.';
DO $do$
DECLARE r text;
BEGIN
    -- Writers (roles that may insert images), as grant-writer gives every function in public.
    FOR r IN SELECT DISTINCT a.grantee::regrole::text FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = 'imagedb_internal.images'::regclass AND a.privilege_type = 'INSERT'
               AND a.grantee <> 0 AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION {FUNCTION} TO %s', r);
    END LOOP;
END $do$;
"""


def upgrade() -> None:
    op.execute(_CREATE)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {FUNCTION}")
