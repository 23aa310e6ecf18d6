"""imagedb_nearest refuses a NULL query vector and one of length zero, in one line, instead of returning rows.

Before, a NULL query (typically the documented recipe `imagedb_nearest((SELECT embedding FROM text_embeddings
WHERE text = ...), ...)` for a text never embedded, whose subquery yields NULL) returned k arbitrary images with a
NULL score, and a zero vector k arbitrary images scored NaN: a BI chart would show them as results.

Revision ID: sqluser
Revises: scale
Create Date: 2026-11-27
"""

from alembic import op

revision = "sqluser"
down_revision = "scale"
branch_labels = None
depends_on = None

# imagedb's default ef_search (imagedb/config.py DEFAULT_EF_SEARCH), for collections never tuned.
DEFAULT_EF_SEARCH = 100

_CHECKS = """
    IF query IS NULL THEN
        RAISE EXCEPTION 'imagedb_nearest: the query vector is NULL'
            USING HINT = 'a text never searched has no row in text_embeddings: search it once with imagedb search '
                         '(or the HTTP API), or call imagedb_search_text(text, collection, k), which says so';
    END IF;
    IF l2_norm(query) = 0 THEN
        RAISE EXCEPTION 'imagedb_nearest: the query vector has length 0, so it is near no image';
    END IF;
"""


def _nearest(checks: str) -> str:
    """imagedb_nearest as revision `relevance` made it, with `checks` run before anything else."""
    return rf"""
CREATE OR REPLACE FUNCTION imagedb_nearest(
    query halfvec, collection_name text, k integer DEFAULT 10,
    ef_search integer DEFAULT NULL, exclude bigint DEFAULT NULL
)
RETURNS TABLE (image_id bigint, path text, score double precision)
LANGUAGE plpgsql AS $$
DECLARE
    c record;
BEGIN{checks}
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
"""


def upgrade() -> None:
    op.execute(_nearest(_CHECKS))


def downgrade() -> None:
    op.execute(_nearest(""))
