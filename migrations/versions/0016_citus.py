"""Citus: the last two keys that a distributed `images` cannot keep (docs/scaling.md).

- `images`' UNIQUE (collection_id, path) becomes a plain index of the same columns. Citus can only enforce a unique
  key that includes the distribution column (`id`). One row per path in a collection is kept by the only writer,
  `Store.images.write_batch`, which checks the stored paths while holding an advisory lock per path (on Citus these
  are taken on the coordinator, through which every write goes); the lookups by path keep their index.
- `duplicate_groups.matched_image_id` loses its foreign key to `images(id)`: the matched image lives on another
  shard. What its ON DELETE CASCADE did (a member linked through a deleted image leaves its group) is done by the
  statements that delete images, in the same transaction.

Revision ID: citus
Revises: readers
Create Date: 2026-12-07
"""

from alembic import op

revision = "citus"
down_revision = "limits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE images DROP CONSTRAINT images_collection_id_path_key")
    op.execute("CREATE INDEX images_collection_id_path_idx ON images (collection_id, path)")
    op.execute("ALTER TABLE duplicate_groups DROP CONSTRAINT duplicate_groups_matched_image_id_fkey")


def downgrade() -> None:
    op.execute(
        "DELETE FROM duplicate_groups g WHERE matched_image_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM images i WHERE i.id = g.matched_image_id)"
    )
    op.execute(
        "ALTER TABLE duplicate_groups ADD CONSTRAINT duplicate_groups_matched_image_id_fkey"
        " FOREIGN KEY (matched_image_id) REFERENCES images(id) ON DELETE CASCADE"
    )
    op.execute("DROP INDEX images_collection_id_path_idx")
    op.execute("ALTER TABLE images ADD CONSTRAINT images_collection_id_path_key UNIQUE (collection_id, path)")
