"""Text queries get their own ef_search: `imagedb tune` measures recall on query texts (the text cache, else
text-like probes) apart from image queries, since CLIP's text vectors sit far from every image and need a wider
search for the same recall (bench/results/text_recall_1000000.txt). search_tuning gains the ef_search text queries
use, the recall last measured for them, at which ef_search, and on what queries ("cached texts" or "probes").

Revision ID: textrecall
Revises: internal
Create Date: 2026-12-07
"""

from alembic import op

revision = "textrecall"
down_revision = "keywords"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE search_tuning"
        " ADD COLUMN text_ef_search integer"
        " CONSTRAINT search_tuning_text_ef_search_check CHECK (text_ef_search BETWEEN 1 AND 1000),"
        " ADD COLUMN text_recall double precision,"
        " ADD COLUMN text_recall_ef_search integer,"
        " ADD COLUMN text_queries text"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE search_tuning DROP COLUMN text_ef_search, DROP COLUMN text_recall,"
        " DROP COLUMN text_recall_ef_search, DROP COLUMN text_queries"
    )
