"""Relevance and recall that check themselves: a random sample of each collection's vectors per model (the baseline
a query's scores are compared with), the tuned ef_search and the last measured recall per collection and model, and
imagedb_nearest / imagedb_similar that use the tuned ef_search and break score ties by image id.

Revision ID: relevance
Revises: 0004
Create Date: 2026-11-28
"""

from alembic import op

revision = "relevance"
down_revision = "0004"
branch_labels = None
depends_on = None

# imagedb's default ef_search (imagedb/config.py DEFAULT_EF_SEARCH), for collections never tuned.
DEFAULT_EF_SEARCH = 100
SAMPLE_SIZE = 1000  # imagedb/relevance.py SAMPLE_SIZE

_NEAREST_0002 = r"""
CREATE FUNCTION imagedb_nearest(query halfvec, collection_name text, k integer DEFAULT 10)
RETURNS TABLE (image_id bigint, path text, score double precision)
LANGUAGE plpgsql AS $$
DECLARE
    c record;
BEGIN
    SELECT col.id, col.model_id, m.dim INTO c
    FROM collections col JOIN embedding_models m ON m.id = col.model_id
    WHERE col.name = collection_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'imagedb_nearest: no collection named %', collection_name;
    END IF;
    PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
    RETURN QUERY EXECUTE format(
        'WITH nearest AS MATERIALIZED ('
        ' SELECT e.image_id, i.path, (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s))::float8 AS distance'
        ' FROM embeddings e JOIN images i ON i.id = e.image_id'
        ' WHERE e.model_id = $2 AND i.collection_id = $3'
        ' ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) LIMIT $4)'
        ' SELECT n.image_id, n.path, 1 - n.distance FROM nearest n ORDER BY n.distance', c.dim)
    USING query, c.model_id, c.id, k;
END
$$;

CREATE FUNCTION imagedb_similar(query_image_id bigint, k integer DEFAULT 10)
RETURNS TABLE (image_id bigint, path text, score double precision)
LANGUAGE plpgsql AS $$
DECLARE
    q record;
BEGIN
    SELECT e.embedding, col.name INTO q
    FROM images i
    JOIN collections col ON col.id = i.collection_id
    JOIN embeddings e ON e.image_id = i.id AND e.model_id = col.model_id
    WHERE i.id = query_image_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'imagedb_similar: no embedded image with id %', query_image_id;
    END IF;
    RETURN QUERY
    SELECT n.image_id, n.path, n.score FROM imagedb_nearest(q.embedding, q.name, k + 1) n
    WHERE n.image_id <> query_image_id
    LIMIT k;
END
$$;
"""

_NEAREST = rf"""
-- Nearest images of a collection to a query vector, through the collection model's HNSW index, with the same
-- settings as `imagedb search`: the collection's tuned ef_search (`imagedb tune`), else {DEFAULT_EF_SEARCH}, unless
-- the call names one; a relaxed iterative scan; ties broken by image id.
CREATE FUNCTION imagedb_nearest(
    query halfvec, collection_name text, k integer DEFAULT 10,
    ef_search integer DEFAULT NULL, exclude bigint DEFAULT NULL
)
RETURNS TABLE (image_id bigint, path text, score double precision)
LANGUAGE plpgsql AS $$
DECLARE
    c record;
BEGIN
    SELECT col.id, col.model_id, m.dim,
           coalesce(imagedb_nearest.ef_search, t.ef_search, {DEFAULT_EF_SEARCH}) AS ef INTO c
    FROM collections col JOIN embedding_models m ON m.id = col.model_id
    LEFT JOIN search_tuning t ON t.collection_id = col.id AND t.model_id = col.model_id
    WHERE col.name = collection_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'imagedb_nearest: no collection named %', collection_name;
    END IF;
    IF c.ef NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'imagedb_nearest: ef_search must be between 1 and 1000, not %', c.ef;
    END IF;
    PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
    PERFORM set_config('hnsw.ef_search', c.ef::text, true);
    RETURN QUERY EXECUTE format(
        'WITH nearest AS MATERIALIZED ('
        ' SELECT e.image_id, i.path, (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s))::float8 AS distance'
        ' FROM embeddings e JOIN images i ON i.id = e.image_id'
        ' WHERE e.model_id = $2 AND i.collection_id = $3 AND i.id IS DISTINCT FROM $5'
        ' ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) LIMIT $4)'
        ' SELECT n.image_id, n.path, 1 - n.distance FROM nearest n ORDER BY n.distance, n.image_id', c.dim)
    USING query, c.model_id, c.id, k, exclude;
END
$$;

-- Images most like a stored one, in its own collection, itself left out (as `imagedb search --like N` and
-- /api/images/N/similar leave it out).
CREATE FUNCTION imagedb_similar(query_image_id bigint, k integer DEFAULT 10, ef_search integer DEFAULT NULL)
RETURNS TABLE (image_id bigint, path text, score double precision)
LANGUAGE plpgsql AS $$
DECLARE
    q record;
BEGIN
    SELECT e.embedding, col.name INTO q
    FROM images i
    JOIN collections col ON col.id = i.collection_id
    JOIN embeddings e ON e.image_id = i.id AND e.model_id = col.model_id
    WHERE i.id = query_image_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'imagedb_similar: no embedded image with id %', query_image_id;
    END IF;
    RETURN QUERY SELECT * FROM imagedb_nearest(q.embedding, q.name, k, imagedb_similar.ef_search, query_image_id);
END
$$;
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE search_tuning (
            collection_id integer NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
            model_id integer NOT NULL REFERENCES embedding_models (id),
            sampled_at timestamptz,
            sampled_count bigint,
            ef_search integer CHECK (ef_search BETWEEN 1 AND 1000),
            target_recall double precision,
            recall double precision,
            recall_ef_search integer,
            recall_count bigint,
            recall_at timestamptz,
            PRIMARY KEY (collection_id, model_id)
        );
        CREATE TABLE relevance_samples (
            collection_id integer NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
            model_id integer NOT NULL REFERENCES embedding_models (id),
            image_id bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
            PRIMARY KEY (collection_id, model_id, image_id)
        );
        CREATE INDEX relevance_samples_image_id_idx ON relevance_samples (image_id);
        DROP FUNCTION imagedb_similar(bigint, integer);
        DROP FUNCTION imagedb_nearest(halfvec, text, integer);
        """
    )
    op.execute(_NEAREST)
    # Collections stored before this revision get their sample now; later ingests refresh it as they grow.
    op.execute(
        f"""
        INSERT INTO relevance_samples (collection_id, model_id, image_id)
        SELECT c.id, c.model_id, s.id FROM collections c CROSS JOIN LATERAL (
            SELECT i.id FROM images i JOIN embeddings e ON e.image_id = i.id AND e.model_id = c.model_id
            WHERE i.collection_id = c.id ORDER BY random() LIMIT {SAMPLE_SIZE}) s;
        INSERT INTO search_tuning (collection_id, model_id, sampled_at, sampled_count)
        SELECT c.id, c.model_id, now(), (SELECT count(*) FROM images i JOIN embeddings e
            ON e.image_id = i.id AND e.model_id = c.model_id WHERE i.collection_id = c.id)
        FROM collections c;
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION imagedb_similar(bigint, integer, integer);"
        " DROP FUNCTION imagedb_nearest(halfvec, text, integer, integer, bigint);"
        " DROP TABLE relevance_samples; DROP TABLE search_tuning;"
    )
    op.execute(_NEAREST_0002)
