"""Several models per collection, provenance per model and per vector, and a text-query cache.

- embedding_models records where its weights came from: the checkpoint's SHA-256 and size, the open_clip and torch
  versions, the image preprocessing and the tokenizer (NULL for models registered before this revision: filled in
  the next time one is used).
- collection_models: every model a collection holds. collections.model_id stays the model searches use; a model
  being added (`imagedb models add`) has ready_at NULL until each image has its vector and the index is built.
- embeddings.run_id and ingest_runs.model_id / command: each vector names the run (an ingest or a `models add`)
  that made it; NULL for vectors stored before this revision.
- text_embeddings: text queries embedded once per model, so a repeated query needs no model; the SQL function
  imagedb_search_text() searches by a text found there.

Revision ID: models
Revises: dicom
Create Date: 2026-11-27
"""

from alembic import op

revision = "models"
down_revision = "dicom"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
        ALTER TABLE embedding_models
            ADD COLUMN checkpoint_sha256 text,
            ADD COLUMN checkpoint_bytes bigint,
            ADD COLUMN open_clip_version text,
            ADD COLUMN torch_version text,
            ADD COLUMN preprocess jsonb,
            ADD COLUMN tokenizer text;

        CREATE TABLE collection_models (
            collection_id integer NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
            model_id integer NOT NULL REFERENCES embedding_models(id),
            added_at timestamptz NOT NULL DEFAULT now(),
            ready_at timestamptz,
            PRIMARY KEY (collection_id, model_id)
        );
        INSERT INTO collection_models (collection_id, model_id, added_at, ready_at)
            SELECT id, model_id, created_at, created_at FROM collections;

        ALTER TABLE ingest_runs
            ADD COLUMN model_id integer REFERENCES embedding_models(id) ON DELETE SET NULL,
            ADD COLUMN command text NOT NULL DEFAULT 'ingest'
                CONSTRAINT ingest_runs_command_check CHECK (command IN ('ingest', 'models add'));
        UPDATE ingest_runs r SET model_id = c.model_id FROM collections c WHERE c.id = r.collection_id;

        ALTER TABLE embeddings ADD COLUMN run_id bigint REFERENCES ingest_runs(id) ON DELETE SET NULL;

        -- Keyed by the text's SHA-256, not the text: a btree entry cannot hold a long text.
        CREATE TABLE text_embeddings (
            model_id integer NOT NULL REFERENCES embedding_models(id) ON DELETE CASCADE,
            text_sha256 bytea NOT NULL,
            text text NOT NULL,
            embedding halfvec NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (model_id, text_sha256)
        );
        CREATE INDEX text_embeddings_age_idx ON text_embeddings (model_id, created_at);

        -- Search by a text embedded before (by any `imagedb search` or API query), with no model in SQL.
        CREATE FUNCTION imagedb_search_text(query text, collection_name text, k integer DEFAULT 10)
        RETURNS TABLE (image_id bigint, path text, score double precision)
        LANGUAGE plpgsql AS $$
        DECLARE
            c record;
            q halfvec;
        BEGIN
            SELECT col.model_id, m.name, m.pretrained INTO c
            FROM collections col JOIN embedding_models m ON m.id = col.model_id
            WHERE col.name = collection_name;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'imagedb_search_text: no collection named %', collection_name;
            END IF;
            SELECT t.embedding INTO q FROM text_embeddings t
            WHERE t.model_id = c.model_id AND t.text_sha256 = sha256(convert_to(query, 'UTF8'));
            IF NOT FOUND THEN
                RAISE EXCEPTION 'imagedb_search_text: the text % has not been embedded by model %:% yet',
                    quote_literal(query), c.name, c.pretrained
                    USING HINT = format('embed it once: imagedb search %s -c %s (or the HTTP API); then it is cached',
                                        quote_literal(query), quote_literal(collection_name));
            END IF;
            RETURN QUERY SELECT n.image_id, n.path, n.score FROM imagedb_nearest(q, collection_name, k) n;
        END
        $$;

        -- Writer roles made by `imagedb grant-writer` before this revision read the new registry table and write
        -- the cache, as `grant-writer` now grants.
        DO $$
        DECLARE
            r record;
        BEGIN
            FOR r IN SELECT DISTINCT grantee FROM information_schema.role_table_grants
                     WHERE table_schema = 'public' AND table_name = 'embeddings' AND privilege_type = 'INSERT'
                       AND grantee <> current_user
            LOOP
                EXECUTE format('GRANT SELECT ON collection_models TO %I', r.grantee);
                EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON text_embeddings TO %I', r.grantee);
            END LOOP;
        END
        $$;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP FUNCTION imagedb_search_text(text, text, integer);
        DROP TABLE text_embeddings;
        ALTER TABLE embeddings DROP COLUMN run_id;
        ALTER TABLE ingest_runs DROP COLUMN command, DROP COLUMN model_id;
        DROP TABLE collection_models;
        ALTER TABLE embedding_models DROP COLUMN checkpoint_sha256, DROP COLUMN checkpoint_bytes,
            DROP COLUMN open_clip_version, DROP COLUMN torch_version, DROP COLUMN preprocess, DROP COLUMN tokenizer;
        """
    )
