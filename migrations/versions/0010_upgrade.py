"""Databases made by an older imagedb work as new ones after the upgrade (found by upgrading real old databases):

- Roles made by `imagedb grant-writer` before the revisions `relevance` and `dicom` could not ingest or search any
  more ("permission denied for table search_tuning": every search reads it, every ingest refreshes the relevance
  sample), nor store DICOM images; roles made by `grant-reader` could not read dicom_catalog. They get what
  `grant-writer` / `grant-reader` grant today on the objects added since (the revision `models` did this for its
  own tables).
- Images stored before perceptual hashes existed (revision 0003) had none: `imagedb dupes` and `watch add` passed
  them over without a word (a stored copy of a watched image was reported as "0 stored image(s) already look like
  it"), and `db check` failed until `imagedb db reindex --hashes`. Their hashes are computed here, from the stored
  thumbnails, by the function ingest uses, so they compare with those of new images.

Revision ID: upgrade
Revises: sqluser
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "upgrade"
down_revision = "sqluser"
branch_labels = None
depends_on = None

# What grant-writer grants today on the tables, view and function added after the revision 0004 (imagedb/roles.py
# WRITER_TABLES, WRITER_READ_ONLY, FORGET_TABLES), spelled out here: a migration must not change with the code.
_WRITER_GRANTS = r"""
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT grantee FROM information_schema.role_table_grants
             WHERE table_schema = 'public' AND table_name = 'embeddings' AND privilege_type = 'INSERT'
               AND grantee NOT IN (current_user, 'PUBLIC')
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON relevance_samples, search_tuning, dicom_images,'
                       ' text_embeddings TO %I', r.grantee);
        EXECUTE format('GRANT SELECT ON collection_models, dicom_catalog TO %I', r.grantee);
        EXECUTE format('GRANT EXECUTE ON FUNCTION imagedb_uid_hash(text) TO %I', r.grantee);
        IF current_setting('server_version_num')::int >= 170000 THEN
            -- `forget` vacuums the tables it deleted from, dicom_images among them.
            EXECUTE format('GRANT MAINTAIN ON dicom_images TO %I', r.grantee);
        END IF;
    END LOOP;
    FOR r IN SELECT DISTINCT grantee FROM information_schema.role_table_grants
             WHERE table_schema = 'public' AND table_name = 'image_catalog' AND privilege_type = 'SELECT'
               AND grantee NOT IN (current_user, 'PUBLIC')
    LOOP
        EXECUTE format('GRANT SELECT ON dicom_catalog TO %I', r.grantee);
    END LOOP;
END
$$;
"""

_BATCH = 500


def upgrade() -> None:
    op.execute(_WRITER_GRANTS)
    _backfill_hashes(op.get_bind())


def _backfill_hashes(bind: sa.engine.Connection) -> None:
    from imagedb.thumbnails import perceptual_hash

    after = 0
    while rows := bind.execute(
        sa.text(
            "SELECT i.id, t.jpeg FROM images i JOIN thumbnails t ON t.image_id = i.id"
            " WHERE i.dhash IS NULL AND i.id > :after ORDER BY i.id LIMIT :n"
        ),
        {"after": after, "n": _BATCH},
    ).fetchall():
        hashes = []
        for image_id, jpeg in rows:
            try:
                hashes.append({"id": image_id, "hash": perceptual_hash(bytes(jpeg))})
            except Exception:  # an unreadable thumbnail keeps no hash, as before; db check names it
                continue
        if hashes:
            bind.execute(sa.text("UPDATE images SET dhash = CAST(:hash AS bit(64)) WHERE id = :id"), hashes)
        after = rows[-1][0]


def downgrade() -> None:
    # The grants and hashes are what the earlier revisions' own code gives new roles and images: nothing to undo.
    pass
