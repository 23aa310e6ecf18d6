"""The text-query cache is written by its owner alone.

A cached row is trusted by every later search of its text (by any role, and by the readers' imagedb_search_text),
without running the model: a role that may write `text_embeddings` chooses what any text finds. So only the owner
(the role that runs `imagedb db upgrade`) writes it: INSERT, UPDATE, DELETE, TRUNCATE and TRIGGER are revoked from
every other role that holds them (grant-writer gave writers the first four), SELECT stays. Writers' searches still
read the cache; a text they embed is not kept (the owner's next search of it keeps it).

When some other role could write the cache, its rows cannot be told apart from the owner's: they are deleted, and
each text is embedded again at its next search (a cache: nothing else is lost).

Revision ID: cache
Revises: readers
Create Date: 2026-12-07
"""

from alembic import op

revision = "cache"
down_revision = "readers"
branch_labels = None
depends_on = None

_OWNER_ONLY = r"""
DO $$
DECLARE
    r record;
    revoked integer := 0;
BEGIN
    FOR r IN SELECT DISTINCT a.grantee
             FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = 'text_embeddings'::regclass AND a.grantee <> c.relowner
               AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'TRIGGER')
    LOOP
        IF r.grantee = 0 THEN
            REVOKE INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER ON text_embeddings FROM PUBLIC;
        ELSE
            EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER ON text_embeddings FROM %I',
                           pg_get_userbyid(r.grantee));
        END IF;
        revoked := revoked + 1;
    END LOOP;
    IF revoked > 0 THEN
        DELETE FROM text_embeddings;
    END IF;
END
$$;
"""


def upgrade() -> None:
    op.execute(_OWNER_ONLY)


def downgrade() -> None:
    # The writers' write privileges are not given back: a downgraded imagedb caches nothing for a writer (its
    # searches already tolerate that, as on a replica), and `grant-writer` of that version grants them again.
    pass
