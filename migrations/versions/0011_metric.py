"""The SQL functions take the measure to rank and score by: imagedb_nearest, imagedb_similar and imagedb_search_text
get a last argument `metric text DEFAULT 'cosine'` (cosine, euclidean, pearson or inner), as `imagedb search
--metric` and the API's `metric` have.

Every call written for the old signatures means what it meant: the new argument comes last, with cosine as its
default, and the cosine statement is the old one word for word. The old functions are dropped, not overloaded: an
overload with one more defaulted argument would make every old call ambiguous.

Euclidean distance and the inner product read the cosine index (for the unit vectors imagedb stores they rank as the
cosine does) and are computed exactly on the rows it returns; Pearson re-ranks ten times k candidates from the index
(at least ef_search), as imagedb/store/metrics.py does for `imagedb search`.

Revision ID: metric
Revises: upgrade
Create Date: 2026-12-07
"""

from alembic import op

revision = "metric"
down_revision = "upgrade"
branch_labels = None
depends_on = None

# imagedb's default ef_search (imagedb/config.py DEFAULT_EF_SEARCH), for collections never tuned.
DEFAULT_EF_SEARCH = 100
# Spelled out here, as a migration must not change with the code: imagedb/store/metrics.py PEARSON_FACTOR and
# PEARSON_MAX_POOL.
PEARSON_FACTOR = 10
PEARSON_MAX_POOL = 100_000

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

# The rows of the index scan, in cosine order, with the measure's rank key (lower first) as `distance`: %1$s is the
# dimension, %2$s the key. $1 query, $2 model, $3 collection, $4 rows to read, $5 the image left out.
_SCAN = (
    "' SELECT e.image_id, i.path, (%2$s)::float8 AS distance'\n"
    "        ' FROM embeddings e JOIN images i ON i.id = e.image_id'\n"
    "        ' WHERE e.model_id = $2 AND i.collection_id = $3 AND i.id IS DISTINCT FROM $5'\n"
    "        ' ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) LIMIT $4)'"
)

_NEAREST = rf"""
CREATE FUNCTION imagedb_nearest(
    query halfvec, collection_name text, k integer DEFAULT 10,
    ef_search integer DEFAULT NULL, exclude bigint DEFAULT NULL, metric text DEFAULT 'cosine'
)
RETURNS TABLE (image_id bigint, path text, score double precision)
LANGUAGE plpgsql AS $$
DECLARE
    c record;
    ones halfvec;
    q_mean float8;
    q_var float8;
    pool integer;
BEGIN{_CHECKS}
    IF imagedb_nearest.metric IS NULL OR imagedb_nearest.metric NOT IN ('cosine', 'euclidean', 'pearson', 'inner') THEN
        RAISE EXCEPTION 'imagedb_nearest: unknown metric %: use cosine, euclidean, pearson or inner',
            quote_nullable(imagedb_nearest.metric);
    END IF;
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
    IF imagedb_nearest.metric = 'cosine' THEN
        RETURN QUERY EXECUTE format(
            'WITH nearest AS MATERIALIZED ('
            ' SELECT e.image_id, i.path, (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s))::float8 AS distance'
            ' FROM embeddings e JOIN images i ON i.id = e.image_id'
            ' WHERE e.model_id = $2 AND i.collection_id = $3 AND i.id IS DISTINCT FROM $5'
            ' ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) LIMIT $4)'
            ' SELECT n.image_id, n.path, 1 - n.distance FROM nearest n ORDER BY n.distance, n.image_id', c.dim)
        USING query, c.model_id, c.id, k, exclude;
    ELSIF imagedb_nearest.metric IN ('euclidean', 'inner') THEN
        -- Unit vectors: the cosine order is this measure's order; the score is the exact measure (<#> negates).
        RETURN QUERY EXECUTE format(
            'WITH nearest AS MATERIALIZED ('
        {_SCAN}
            ' SELECT n.image_id, n.path, %3$s FROM nearest n ORDER BY n.distance, n.image_id', c.dim,
            format('e.embedding::halfvec(%1$s) %2$s $1::halfvec(%1$s)', c.dim,
                   CASE imagedb_nearest.metric WHEN 'euclidean' THEN '<->' ELSE '<#>' END),
            CASE imagedb_nearest.metric WHEN 'euclidean' THEN 'n.distance' ELSE '-n.distance' END)
        USING query, c.model_id, c.id, k, exclude;
    ELSE
        -- Pearson: the cosine of the mean-centred vectors; candidates from the index, ranked by their exact value.
        ones := array_fill(1::real, ARRAY[c.dim])::halfvec;
        q_mean := -(query <#> ones) / c.dim;
        q_var := l2_norm(query) ^ 2 - c.dim * q_mean ^ 2;
        IF q_var <= 1e-6 * l2_norm(query) ^ 2 THEN  -- zero but for rounding: every component the same
            RAISE EXCEPTION 'imagedb_nearest: the query vector is constant: its Pearson correlation is undefined';
        END IF;
        pool := greatest(k, least(greatest(k * {PEARSON_FACTOR}, c.ef), {PEARSON_MAX_POOL}));
        RETURN QUERY EXECUTE format(
            'WITH candidates AS MATERIALIZED ('
        {_SCAN}
            ' SELECT n.image_id, n.path, -n.distance FROM candidates n WHERE n.distance IS NOT NULL'
            ' ORDER BY n.distance, n.image_id LIMIT $9', c.dim,
            format('((e.embedding::halfvec(%1$s) <#> $1::halfvec(%1$s)) - (e.embedding::halfvec(%1$s) <#> $6) * $7)'
                   ' / NULLIF(sqrt(greatest(l2_norm(e.embedding::halfvec(%1$s)) ^ 2'
                   ' - (e.embedding::halfvec(%1$s) <#> $6) ^ 2 / %1$s, 0) * $8), 0)', c.dim))
        USING query, c.model_id, c.id, pool, exclude, ones, q_mean, q_var, k;
    END IF;
END
$$;
"""

_SIMILAR = """
-- Images most like a stored one, in its own collection, itself left out (as `imagedb search --like N` and
-- /api/images/N/similar leave it out).
CREATE FUNCTION imagedb_similar(
    query_image_id bigint, k integer DEFAULT 10, ef_search integer DEFAULT NULL, metric text DEFAULT 'cosine'
)
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
    RETURN QUERY SELECT * FROM imagedb_nearest(q.embedding, q.name, k, imagedb_similar.ef_search, query_image_id,
                                               imagedb_similar.metric);
END
$$;
"""

_SEARCH_TEXT = """
-- Search by a text embedded before (by any `imagedb search` or API query), with no model in SQL.
CREATE FUNCTION imagedb_search_text(
    query text, collection_name text, k integer DEFAULT 10, metric text DEFAULT 'cosine'
)
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
    RETURN QUERY SELECT n.image_id, n.path, n.score
    FROM imagedb_nearest(q, collection_name, k, NULL, NULL, imagedb_search_text.metric) n;
END
$$;
"""

# The functions as the revisions `relevance`, `models` and `sqluser` left them, for downgrade().
_OLD = rf"""
CREATE FUNCTION imagedb_nearest(
    query halfvec, collection_name text, k integer DEFAULT 10,
    ef_search integer DEFAULT NULL, exclude bigint DEFAULT NULL
)
RETURNS TABLE (image_id bigint, path text, score double precision)
LANGUAGE plpgsql AS $$
DECLARE
    c record;
BEGIN{_CHECKS}
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
"""


def _grants(nearest: str, similar: str, search_text: str) -> str:
    """EXECUTE on the functions for the roles `grant-writer` made (it grants EXECUTE ON ALL FUNCTIONS, which a
    function created later is not among). Reader roles, like every role, run them through PUBLIC's EXECUTE, as
    they ran the old ones; they read no table the functions read, so the functions give them nothing."""
    return rf"""
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT grantee FROM information_schema.role_table_grants
             WHERE table_schema = 'public' AND table_name = 'embeddings' AND privilege_type = 'INSERT'
               AND grantee NOT IN (current_user, 'PUBLIC')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION imagedb_nearest({nearest}), imagedb_similar({similar}),'
                       ' imagedb_search_text({search_text}) TO %I', r.grantee);
    END LOOP;
END
$$;
"""


_DROP_OLD = """
DROP FUNCTION imagedb_search_text(text, text, integer);
DROP FUNCTION imagedb_similar(bigint, integer, integer);
DROP FUNCTION imagedb_nearest(halfvec, text, integer, integer, bigint);
"""
_DROP_NEW = """
DROP FUNCTION imagedb_search_text(text, text, integer, text);
DROP FUNCTION imagedb_similar(bigint, integer, integer, text);
DROP FUNCTION imagedb_nearest(halfvec, text, integer, integer, bigint, text);
"""


def upgrade() -> None:
    op.execute(_DROP_OLD)
    op.execute(_NEAREST)
    op.execute(_SIMILAR)
    op.execute(_SEARCH_TEXT)
    op.execute(_grants("halfvec, text, integer, integer, bigint, text", "bigint, integer, integer, text",
                       "text, text, integer, text"))  # fmt: skip


def downgrade() -> None:
    op.execute(_DROP_NEW)
    op.execute(_OLD)
    op.execute(_grants("halfvec, text, integer, integer, bigint", "bigint, integer, integer", "text, text, integer"))
