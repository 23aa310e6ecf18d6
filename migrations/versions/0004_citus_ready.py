"""Citus-ready keys where cheap: watch_hits is keyed by (watch_id, image_id), which holds its distribution column.

Under Citus (docs/scaling.md) the image tables are distributed by image id, and every unique key and foreign key of
a distributed table must include its distribution column. watch_hits had a surrogate primary key (id) beside the
real one, UNIQUE (watch_id, image_id): the real one becomes the primary key, and id stays as an identity column (the
order of hits), without a constraint.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE watch_hits DROP CONSTRAINT watch_hits_pkey;
        ALTER TABLE watch_hits DROP CONSTRAINT watch_hits_watch_id_image_id_key;
        ALTER TABLE watch_hits ADD CONSTRAINT watch_hits_pkey PRIMARY KEY (watch_id, image_id);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE watch_hits DROP CONSTRAINT watch_hits_pkey;
        ALTER TABLE watch_hits ADD CONSTRAINT watch_hits_watch_id_image_id_key UNIQUE (watch_id, image_id);
        ALTER TABLE watch_hits ADD CONSTRAINT watch_hits_pkey PRIMARY KEY (id);
        """
    )
