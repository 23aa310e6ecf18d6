"""SQL for readers: a `grant-reader` role searches through the SQL functions, and every view, view column and
function says what it holds.

- imagedb_nearest, imagedb_similar and imagedb_search_text run as their owner (SECURITY DEFINER, search_path pinned
  to pg_catalog, public), so a reader, who may not read `embeddings`, `collections` or `images`, gets ids, paths and
  scores from them, and still no vector: they return none, read only the tables named here, and refuse bad
  arguments in one line (k outside 1..1000, a NULL or zero vector, one of another dimension than the collection's
  model, an unknown collection or metric). EXECUTE is revoked from PUBLIC and granted to the roles `grant-reader`
  and `grant-writer` made (found, as the revision `upgrade` finds them, by their grants on image_catalog and
  embeddings).
- COMMENT ON every view, view column and imagedb function: units, what NULL means, time zones.
- Clearer columns beside the confusing ones, at the end of the views (CREATE OR REPLACE VIEW can only add there):
  collection_stats.embedding_model (was `model`), distinct_formats and distinct_cameras (were `formats` and
  `cameras`, counts beside the strings format_counts and camera_names); duplicate_report.similarity (cosine
  similarity, rule clip) and hash_distance_bits (rule hash), where `distance` mixed both units;
  dicom_catalog.scanner_model (was `model`). The old columns stay this release, their comments say deprecated.

Revision ID: readers
Revises: metric
Create Date: 2026-12-07
"""

import importlib.util
from pathlib import Path

from alembic import op

revision = "readers"
down_revision = "metric"
branch_labels = None
depends_on = None

MAX_K = 1000  # imagedb/request/param.py MAX_LIMIT, spelled out: a migration must not change with the code
DEFAULT_EF_SEARCH = 100
PEARSON_FACTOR = 10
PEARSON_MAX_POOL = 100_000

NEAREST = "imagedb_nearest(halfvec, text, integer, integer, bigint, text)"
SIMILAR = "imagedb_similar(bigint, integer, integer, text)"
SEARCH_TEXT = "imagedb_search_text(text, text, integer, text)"
UID_HASH = "imagedb_uid_hash(text)"

_DEFINER = "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$"


def _k_check(name: str) -> str:
    return f"""
    IF k IS NULL OR k NOT BETWEEN 1 AND {MAX_K} THEN
        RAISE EXCEPTION '{name}: k must be between 1 and {MAX_K}, not %', coalesce(k::text, 'NULL');
    END IF;"""


_SCAN = (
    "' SELECT e.image_id, i.path, (%2$s)::float8 AS distance'\n"
    "        ' FROM public.embeddings e JOIN public.images i ON i.id = e.image_id'\n"
    "        ' WHERE e.model_id = $2 AND i.collection_id = $3 AND i.id IS DISTINCT FROM $5'\n"
    "        ' AND (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)) <> ''NaN'''\n"
    "        ' ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) LIMIT $4)'"
)

_NEAREST = rf"""
CREATE OR REPLACE FUNCTION imagedb_nearest(
    query halfvec, collection_name text, k integer DEFAULT 10,
    ef_search integer DEFAULT NULL, exclude bigint DEFAULT NULL, metric text DEFAULT 'cosine'
)
RETURNS TABLE (image_id bigint, path text, score double precision)
{_DEFINER}
DECLARE
    c record;
    ones halfvec;
    q_mean float8;
    q_var float8;
    pool integer;
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION 'imagedb_nearest: the query vector is NULL'
            USING HINT = 'a text never searched has no row in text_embeddings: search it once with imagedb search '
                         '(or the HTTP API), or call imagedb_search_text(text, collection, k), which says so';
    END IF;
    IF l2_norm(query) = 0 THEN
        RAISE EXCEPTION 'imagedb_nearest: the query vector has length 0, so it is near no image';
    END IF;{_k_check("imagedb_nearest")}
    IF imagedb_nearest.metric IS NULL OR imagedb_nearest.metric NOT IN ('cosine', 'euclidean', 'pearson', 'inner') THEN
        RAISE EXCEPTION 'imagedb_nearest: unknown metric %: use cosine, euclidean, pearson or inner',
            quote_nullable(imagedb_nearest.metric);
    END IF;
    SELECT col.id, col.model_id, m.dim, m.name AS model,
           coalesce(imagedb_nearest.ef_search, t.ef_search, {DEFAULT_EF_SEARCH}) AS ef INTO c
    FROM public.collections col JOIN public.embedding_models m ON m.id = col.model_id
    LEFT JOIN public.search_tuning t ON t.collection_id = col.id AND t.model_id = col.model_id
    WHERE col.name = collection_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'imagedb_nearest: no collection named %', quote_nullable(collection_name);
    END IF;
    IF c.ef NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'imagedb_nearest: ef_search must be between 1 and 1000, not %', c.ef;
    END IF;
    IF vector_dims(query) <> c.dim THEN
        RAISE EXCEPTION 'imagedb_nearest: the query vector has % dimensions, collection % searches with % (%)',
            vector_dims(query), quote_literal(collection_name), c.model, c.dim;
    END IF;
    PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
    PERFORM set_config('hnsw.ef_search', c.ef::text, true);
    IF imagedb_nearest.metric = 'cosine' THEN
        RETURN QUERY EXECUTE format(
            'WITH nearest AS MATERIALIZED ('
            ' SELECT e.image_id, i.path, (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s))::float8 AS distance'
            ' FROM public.embeddings e JOIN public.images i ON i.id = e.image_id'
            ' WHERE e.model_id = $2 AND i.collection_id = $3 AND i.id IS DISTINCT FROM $5'
            ' AND (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)) <> ''NaN'''
            ' ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) LIMIT $4)'
            ' SELECT n.image_id, n.path, 1 - n.distance FROM nearest n ORDER BY n.distance, n.image_id', c.dim)
        USING query, c.model_id, c.id, k, exclude;
    ELSIF imagedb_nearest.metric IN ('euclidean', 'inner') THEN
        RETURN QUERY EXECUTE format(
            'WITH nearest AS MATERIALIZED ('
        {_SCAN}
            ' SELECT n.image_id, n.path, %3$s FROM nearest n ORDER BY n.distance, n.image_id', c.dim,
            format('e.embedding::halfvec(%1$s) %2$s $1::halfvec(%1$s)', c.dim,
                   CASE imagedb_nearest.metric WHEN 'euclidean' THEN '<->' ELSE '<#>' END),
            CASE imagedb_nearest.metric WHEN 'euclidean' THEN 'n.distance' ELSE '-n.distance' END)
        USING query, c.model_id, c.id, k, exclude;
    ELSE
        ones := array_fill(1::real, ARRAY[c.dim])::halfvec;
        q_mean := -(query <#> ones) / c.dim;
        q_var := l2_norm(query) ^ 2 - c.dim * q_mean ^ 2;
        IF q_var <= 1e-6 * l2_norm(query) ^ 2 THEN
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

_SIMILAR = rf"""
CREATE OR REPLACE FUNCTION imagedb_similar(
    query_image_id bigint, k integer DEFAULT 10, ef_search integer DEFAULT NULL, metric text DEFAULT 'cosine'
)
RETURNS TABLE (image_id bigint, path text, score double precision)
{_DEFINER}
DECLARE
    q record;
BEGIN{_k_check("imagedb_similar")}
    SELECT e.embedding, col.name INTO q
    FROM public.images i
    JOIN public.collections col ON col.id = i.collection_id
    JOIN public.embeddings e ON e.image_id = i.id AND e.model_id = col.model_id
    WHERE i.id = query_image_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'imagedb_similar: no embedded image with id %',
            coalesce(query_image_id::text, 'NULL');
    END IF;
    RETURN QUERY SELECT n.image_id, n.path, n.score
    FROM public.imagedb_nearest(q.embedding, q.name, k, imagedb_similar.ef_search, query_image_id,
                                imagedb_similar.metric) n;
END
$$;
"""

_SEARCH_TEXT = rf"""
CREATE OR REPLACE FUNCTION imagedb_search_text(
    query text, collection_name text, k integer DEFAULT 10, metric text DEFAULT 'cosine'
)
RETURNS TABLE (image_id bigint, path text, score double precision)
{_DEFINER}
DECLARE
    c record;
    q halfvec;
BEGIN{_k_check("imagedb_search_text")}
    IF query IS NULL THEN
        RAISE EXCEPTION 'imagedb_search_text: the query text is NULL';
    END IF;
    SELECT col.model_id, m.name, m.pretrained INTO c
    FROM public.collections col JOIN public.embedding_models m ON m.id = col.model_id
    WHERE col.name = collection_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'imagedb_search_text: no collection named %', quote_nullable(collection_name);
    END IF;
    SELECT t.embedding INTO q FROM public.text_embeddings t
    WHERE t.model_id = c.model_id AND t.text_sha256 = sha256(convert_to(query, 'UTF8'));
    IF NOT FOUND THEN
        RAISE EXCEPTION 'imagedb_search_text: the text % has not been embedded by model %:% yet',
            quote_literal(query), c.name, regexp_replace(c.pretrained, '^.*/', '')  -- a checkpoint's file name only
            USING HINT = format('embed it once: imagedb search %s -c %s (or the HTTP API); then it is cached',
                                quote_literal(query), quote_literal(collection_name));
    END IF;
    RETURN QUERY SELECT n.image_id, n.path, n.score
    FROM public.imagedb_nearest(q, collection_name, k, NULL, NULL, imagedb_search_text.metric) n;
END
$$;
"""

# The views as before, with the clearer columns added at the end.
_VIEWS = """
CREATE OR REPLACE VIEW collection_stats AS
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
              GROUP BY 1) cam) AS camera_names,
       m.name AS embedding_model,
       count(DISTINCT i.format) AS distinct_formats,
       count(DISTINCT concat_ws(' ', i.camera_make, i.camera_model))
           FILTER (WHERE i.camera_make IS NOT NULL OR i.camera_model IS NOT NULL) AS distinct_cameras
FROM collections c
JOIN embedding_models m ON m.id = c.model_id
LEFT JOIN images i ON i.collection_id = c.id
GROUP BY c.id, c.name, m.name;

CREATE OR REPLACE VIEW duplicate_report AS
SELECT c.name AS collection, d.group_no, d.image_id, i.path, d.rule, d.distance, m.path AS matched_path,
       i.size_bytes, i.width, i.height, d.found_at,
       CASE WHEN d.rule = 'clip' THEN 1 - d.distance END AS similarity,
       CASE WHEN d.rule = 'hash' THEN d.distance::integer END AS hash_distance_bits
FROM duplicate_groups d
JOIN collections c ON c.id = d.collection_id
JOIN images i ON i.id = d.image_id
LEFT JOIN images m ON m.id = d.matched_image_id;

CREATE OR REPLACE VIEW dicom_catalog AS
SELECT d.image_id,
       c.name AS collection,
       d.modality,
       d.body_part,
       d.study_year,
       d.study_uid_hash AS study,
       d.series_uid_hash AS series,
       d.frame,
       d.frames,
       i.width,
       i.height,
       i.camera_make AS manufacturer,
       i.camera_model AS model,
       count(*) OVER (PARTITION BY i.collection_id, d.series_uid_hash) AS series_images,
       count(*) OVER (PARTITION BY i.collection_id, d.study_uid_hash) AS study_images,
       i.camera_model AS scanner_model
FROM dicom_images d
JOIN images i ON i.id = d.image_id
JOIN collections c ON c.id = i.collection_id;
"""

# The views as the revisions `search_surface`, `duplicates` and `dicom` made them, for downgrade().
_OLD_VIEWS = {
    "collection_stats": _VIEWS.split("CREATE OR REPLACE VIEW duplicate_report")[0].replace(
        """,
       m.name AS embedding_model,
       count(DISTINCT i.format) AS distinct_formats,
       count(DISTINCT concat_ws(' ', i.camera_make, i.camera_model))
           FILTER (WHERE i.camera_make IS NOT NULL OR i.camera_model IS NOT NULL) AS distinct_cameras""",
        "",
    ),
    "duplicate_report": "CREATE OR REPLACE VIEW duplicate_report"
    + _VIEWS.split("CREATE OR REPLACE VIEW duplicate_report")[1]
    .split("CREATE OR REPLACE VIEW dicom_catalog")[0]
    .replace(
        """,
       CASE WHEN d.rule = 'clip' THEN 1 - d.distance END AS similarity,
       CASE WHEN d.rule = 'hash' THEN d.distance::integer END AS hash_distance_bits""",
        "",
    ),
    "dicom_catalog": "CREATE OR REPLACE VIEW dicom_catalog"
    + _VIEWS.split("CREATE OR REPLACE VIEW dicom_catalog")[1].replace(",\n       i.camera_model AS scanner_model", ""),
}

_DEPRECATED = "Deprecated (kept this release, to be removed): "
_NULL_EMPTY = "NULL for a collection without images."
_COMMENTS: dict[str, dict[str, str]] = {
    "image_catalog": {
        "": "One row per stored image, for BI tools: plain metadata; no vectors, thumbnails, raw EXIF or attributes.",
        "image_id": "The image's id (images.id): what imagedb_similar() and `imagedb search --like` take.",
        "collection": "Name of the collection the image is stored in.",
        "path": "Path of the file as ingested, on the imagedb host (for a frame of a DICOM file: PATH#frame=N).",
        "sha256": "SHA-256 of the file's bytes, 64 lowercase hex digits.",
        "size_bytes": "Size of the file in bytes.",
        "mtime": "The file's modification time when ingested (timestamp with time zone).",
        "width": "Width in pixels as stored in the file (before EXIF orientation is applied).",
        "height": "Height in pixels as stored in the file (before EXIF orientation is applied).",
        "format": "Image format as Pillow names it: JPEG, PNG, WEBP, HEIF, DICOM, ...",
        "taken_at": "EXIF DateTimeOriginal: the camera's local time, without a time zone; NULL when the file has "
        "none (searches then use mtime).",
        "camera_make": "EXIF Make (DICOM: Manufacturer); NULL when the file has none.",
        "camera_model": "EXIF Model (DICOM: ManufacturerModelName); NULL when the file has none.",
        "orientation": "EXIF Orientation, 1 to 8 (1 = upright, 6 = turned a quarter clockwise); NULL without it.",
        "ingested_at": "When imagedb stored the image (timestamp with time zone).",
    },
    "collection_stats": {
        "": "One row per collection, for BI dashboards: image counts, bytes, dates, formats and cameras.",
        "collection": "Name of the collection.",
        "model": _DEPRECATED + "use embedding_model (same value).",
        "images": "Number of images stored in the collection.",
        "total_bytes": "Sum of the images' file sizes, in bytes (numeric); 0 for a collection without images.",
        "first_date": "Earliest taken_at (camera local time), else mtime in UTC, without a time zone. " + _NULL_EMPTY,
        "last_date": "Latest taken_at (camera local time), else mtime in UTC, without a time zone. " + _NULL_EMPTY,
        "formats": _DEPRECATED + "use distinct_formats (same value).",
        "format_counts": "Text: each format with its number of images, most frequent first ('JPEG: 120, PNG: 4'). "
        + _NULL_EMPTY,
        "cameras": _DEPRECATED + "use distinct_cameras (same value).",
        "camera_names": "Text: the cameras (make and model), most frequent first; NULL when no image names one.",
        "embedding_model": "Name of the CLIP model the collection searches with (embedding_models.name), not a camera.",
        "distinct_formats": "Number of different image formats in the collection (see format_counts).",
        "distinct_cameras": "Number of different cameras (make and model) in the collection; images without "
        "either are not counted (see camera_names).",
    },
    "duplicate_report": {
        "": "One row per member of a duplicate group saved by the last `imagedb dupes` of its collection.",
        "collection": "Name of the collection.",
        "group_no": "Number of the group within its collection, in the last `imagedb dupes` run.",
        "image_id": "The member's image id (image_catalog.image_id).",
        "path": "The member's path, as ingested.",
        "rule": "How the member joined its group: first (the group's first image), sha256 (same bytes), "
        "hash (perceptual hash within some bits) or clip (CLIP embeddings similar).",
        "distance": _DEPRECATED + "mixed units: bits for rule hash, cosine distance (1 - similarity) for clip, "
        "0 for sha256, NULL for first. Use similarity or hash_distance_bits.",
        "matched_path": "Path of the member it was linked through; NULL for the group's first image.",
        "size_bytes": "The member's file size in bytes.",
        "width": "The member's width in pixels, as stored in the file.",
        "height": "The member's height in pixels, as stored in the file.",
        "found_at": "When `imagedb dupes` saved the group (timestamp with time zone).",
        "similarity": "Cosine similarity of the CLIP embeddings (1 = same direction) for rule clip; NULL for the "
        "other rules.",
        "hash_distance_bits": "Number of the 64 perceptual-hash bits that differ (0 = same hash) for rule hash; "
        "NULL for the other rules.",
    },
    "dicom_catalog": {
        "": "One row per DICOM image, de-identified: no path, no header, keyed hashes of the UIDs.",
        "image_id": "The image's id (image_catalog.image_id).",
        "collection": "Name of the collection.",
        "modality": "DICOM Modality (CT, MR, CR, US, ...); NULL when the file has none.",
        "body_part": "DICOM BodyPartExamined; NULL when the file has none.",
        "study_year": "Year of the DICOM StudyDate (dates are kept to the year unless --keep-dates); NULL without one.",
        "study": "Keyed hash of the StudyInstanceUID, 32 hex digits: equal for images of one study, not the UID.",
        "series": "Keyed hash of the SeriesInstanceUID, 32 hex digits: equal for images of one series.",
        "frame": "Which frame of a multi-frame file this row is (1-based); NULL for a single-frame file.",
        "frames": "Number of frames in the file.",
        "width": "Width in pixels.",
        "height": "Height in pixels.",
        "manufacturer": "DICOM Manufacturer of the scanner; NULL when the file has none.",
        "model": _DEPRECATED + "use scanner_model (same value; not an embedding model).",
        "series_images": "Number of rows of this view in the same collection and series.",
        "study_images": "Number of rows of this view in the same collection and study.",
        "scanner_model": "DICOM ManufacturerModelName: the scanner's model, not an embedding model; NULL when the "
        "file has none.",
    },
}

_SCORE = (
    " Returns (image_id, path, score): score is the cosine similarity (1 = same direction), the Euclidean distance"
    " (lower first), the Pearson correlation or the inner product, as metric says ('cosine', 'euclidean',"
    " 'pearson' or 'inner'), ties by image_id. k is 1 to 1000; ef_search NULL means the collection's tuned"
    " value, else 100. Runs as its owner: readers may call it, and it returns no vectors."
)
_FUNCTION_COMMENTS = {
    NEAREST: "The k images of a collection nearest to a query vector (halfvec of the collection model's "
    "dimension, not NULL or zero), through the HNSW index; exclude leaves one image id out." + _SCORE,
    SIMILAR: "The k images most like a stored image, in its collection, itself left out (as imagedb search "
    "--like)." + _SCORE,
    SEARCH_TEXT: "The k images nearest a text that imagedb search or the HTTP API has embedded before for the "
    "collection's model; a text never embedded is refused with a hint." + _SCORE,
    UID_HASH: "Keyed hash (HMAC-SHA256, 32 hex digits) of a DICOM UID, as dicom_catalog's study and series "
    "hold; NULL for NULL. Writers only.",
}

# Roles made by `imagedb grant-reader` (SELECT on image_catalog) and `grant-writer` (INSERT on embeddings).
_EXISTING_ROLES = """
SELECT DISTINCT grantee FROM information_schema.role_table_grants
WHERE table_schema = 'public' AND privilege_type = %(privilege)s AND table_name = %(table)s
  AND grantee NOT IN (current_user, 'PUBLIC')
"""


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comments() -> str:
    statements = []
    for view, columns in _COMMENTS.items():
        for column, text in columns.items():
            target = f"VIEW {view}" if not column else f"COLUMN {view}.{column}"
            statements.append(f"COMMENT ON {target} IS {_quote(text)};")
    statements += [f"COMMENT ON FUNCTION {f} IS {_quote(text)};" for f, text in _FUNCTION_COMMENTS.items()]
    return "\n".join(statements)


def _roles(privilege: str, table: str) -> list[str]:
    rows = op.get_bind().exec_driver_sql(
        _EXISTING_ROLES.replace("%(privilege)s", _quote(privilege)).replace("%(table)s", _quote(table))
    )
    return [r[0] for r in rows]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upgrade() -> None:
    op.execute(_NEAREST)
    op.execute(_SIMILAR)
    op.execute(_SEARCH_TEXT)
    owner = op.get_bind().exec_driver_sql("SELECT tableowner FROM pg_tables WHERE schemaname = 'public'"
                                          " AND tablename = 'images'").scalar_one()  # fmt: skip
    functions = f"{NEAREST}, {SIMILAR}, {SEARCH_TEXT}"
    for function in (NEAREST, SIMILAR, SEARCH_TEXT):
        op.execute(f"ALTER FUNCTION {function} OWNER TO {_ident(owner)}")
    op.execute(f"REVOKE EXECUTE ON FUNCTION {functions} FROM PUBLIC")
    for role in sorted({*_roles("SELECT", "image_catalog"), *_roles("INSERT", "embeddings")}):
        op.execute(f"GRANT EXECUTE ON FUNCTION {functions} TO {_ident(role)}")
    op.execute(_VIEWS)
    op.execute(_comments())


def downgrade() -> None:
    old = _load("0011_metric.py")
    for body in (old._NEAREST, old._SIMILAR, old._SEARCH_TEXT):
        op.execute(body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute(f"GRANT EXECUTE ON FUNCTION {NEAREST}, {SIMILAR}, {SEARCH_TEXT} TO PUBLIC")
    for view, definition in _OLD_VIEWS.items():
        grants = (
            op.get_bind()
            .exec_driver_sql(
                "SELECT grantee, privilege_type FROM information_schema.role_table_grants"
                f" WHERE table_schema = 'public' AND table_name = {_quote(view)} AND grantee <> current_user"
            )
            .fetchall()
        )
        op.execute(f"DROP VIEW {view}")
        op.execute(definition.replace("CREATE OR REPLACE VIEW", "CREATE VIEW"))
        for grantee, privilege in grants:
            op.execute(f"GRANT {privilege} ON {view} TO {'PUBLIC' if grantee == 'PUBLIC' else _ident(grantee)}")
    for view in ("image_catalog",):
        op.execute(f"COMMENT ON VIEW {view} IS NULL")
        for column in _COMMENTS[view]:
            if column:
                op.execute(f"COMMENT ON COLUMN {view}.{column} IS NULL")
    for function in _FUNCTION_COMMENTS:
        op.execute(f"COMMENT ON FUNCTION {function} IS NULL")


def _load(name: str):  # type: ignore[no-untyped-def]
    """An earlier revision's module, for the statements it ran (they do not change)."""
    spec = importlib.util.spec_from_file_location(f"_imagedb_revision_{name[:4]}", Path(__file__).with_name(name))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module
