"""Binary quantisation per model: embedding_models.rerank, the number of candidates a search reads from the model's
binary-quantised HNSW index (`imagedb db reindex --quantize binary --rerank N`) before re-ranking them exactly on
the stored halfvec. NULL: the model is searched through its halfvec index alone, as before.

Revision ID: scale
Revises: models
Create Date: 2026-11-27
"""

from alembic import op

revision = "scale"
down_revision = "models"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE embedding_models ADD COLUMN rerank integer"
        " CONSTRAINT embedding_models_rerank_check CHECK (rerank > 0)"
    )


def downgrade() -> None:
    op.execute(
        """
        DO $$ DECLARE r record; BEGIN
          FOR r IN SELECT c.relname FROM pg_class c
                   WHERE c.relkind = 'i' AND c.relname LIKE 'embeddings\\_hnsw\\_bit\\_%' LOOP
            EXECUTE format('DROP INDEX %I', r.relname);
          END LOOP;
        END $$;
        ALTER TABLE embedding_models DROP COLUMN rerank;
        """
    )
