"""SQL surface for search: imagedb_nearest() and imagedb_similar() functions, the collection_stats view.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
        -- Nearest images of a collection to a query vector, through the collection model's HNSW index.
        -- Dynamic SQL, because the index expression carries the model's dimension: embedding::halfvec(dim).
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
            -- Relaxed iterative scans find more of the true neighbours behind a filter; the outer ORDER BY
            -- restores the exact order.
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

        -- Images most like a stored one, in its own collection, itself left out.
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

        -- One row per collection for BI dashboards.
        CREATE VIEW collection_stats AS
        SELECT c.name AS collection,
               m.name AS model,
               count(i.id) AS images,
               coalesce(sum(i.size_bytes), 0) AS total_bytes,
               min(coalesce(i.taken_at, i.mtime AT TIME ZONE 'UTC')) AS first_date,
               max(coalesce(i.taken_at, i.mtime AT TIME ZONE 'UTC')) AS last_date,
               count(DISTINCT i.format) AS formats,
               (SELECT string_agg(f.format || ': ' || f.n, ', ' ORDER BY f.n DESC, f.format)
                FROM (SELECT format, count(*) AS n FROM images WHERE collection_id = c.id GROUP BY format) f)
                   AS format_counts,
               count(DISTINCT concat_ws(' ', i.camera_make, i.camera_model))
                   FILTER (WHERE i.camera_make IS NOT NULL OR i.camera_model IS NOT NULL) AS cameras,
               (SELECT string_agg(cam.name, ', ' ORDER BY cam.n DESC, cam.name)
                FROM (SELECT concat_ws(' ', camera_make, camera_model) AS name, count(*) AS n FROM images
                      WHERE collection_id = c.id AND (camera_make IS NOT NULL OR camera_model IS NOT NULL)
                      GROUP BY 1) cam) AS camera_names
        FROM collections c
        JOIN embedding_models m ON m.id = c.model_id
        LEFT JOIN images i ON i.collection_id = c.id
        GROUP BY c.id, c.name, m.name;
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP VIEW collection_stats; DROP FUNCTION imagedb_similar(bigint, integer);"
        " DROP FUNCTION imagedb_nearest(halfvec, text, integer)"
    )
