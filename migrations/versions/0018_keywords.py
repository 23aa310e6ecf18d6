"""Keyword search: the words in and around each image as a tsvector (GIN-indexed), and a hybrid search function.

- `image_words` (one row per image, made by a trigger on images): the photographer's caption and keywords read
  from the file (NULL until read), the OCR text (NULL until read, `ocr_reason` when the engine failed on it), and
  `document`, the tsvector of the file name and folders, the user attributes, the caption and the OCR text, kept
  current by triggers (a changed path or attribute rewrites it).
- Words are made by `keyword_lexemes` (IMMUTABLE SQL, the same for documents and queries): lower case, split at
  anything that is not a letter or digit and between letters and digits (IMG_4711_invoice: img 4711 invoice),
  and runs of CJK characters cut into overlapping bigrams (core full-text search does not segment them). The
  vector is built from these lexemes as they are (the 'simple' configuration's behaviour, no stemming, no
  stop words), with weights A name, B attributes and caption, C OCR text.
- `public.imagedb_search_hybrid(text, collection, k)`: reciprocal rank fusion of the vector ranking (the text's
  cached vector, as imagedb_search_text reads it) and the keyword ranking; for readers (SECURITY DEFINER, pinned
  search_path), EXECUTE granted to the roles that may call imagedb_search_text.

Revision ID: keywords
Revises: internal
Create Date: 2026-12-07
"""

import re

from alembic import op

revision = "keywords"
down_revision = "claims"
branch_labels = None
depends_on = None

SCHEMA = "imagedb_internal"
HYBRID = "public.imagedb_search_hybrid(text, text, integer)"
MAX_K = 1000
RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al. 2009): 1 / (60 + rank)
POOL = 100  # candidates read from each ranking before fusing, at least k
# CJK ideographs, kana, hangul and compatibility ideographs: no spaces between words, so bigrams.
CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"

_FUNCTIONS = rf"""
CREATE FUNCTION {SCHEMA}.keyword_lexemes(source text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog AS $$
DECLARE
    -- A document's first 100,000 characters: a 10,000-word caption fits, a 1 GB one does not make a 1 GB vector.
    t text := lower(left(source, 100000));
    word text;
    out text[] := '{{}}';
BEGIN
    t := regexp_replace(t, '([a-z])([0-9])', '\1 \2', 'g');
    t := regexp_replace(t, '([0-9])([a-z])', '\1 \2', 'g');
    t := regexp_replace(t, '([{CJK}]+)', ' \1 ', 'g');
    -- Separators: ASCII other than letters and digits, C1 controls, Latin-1 punctuation, general and CJK
    -- punctuation, full-width forms' punctuation.
    FOREACH word IN ARRAY regexp_split_to_array(t,
        '[\x01-\x2f\x3a-\x40\x5b-\x60\x7b-\x9f\xa0-\xbf\xd7\xf7\u2000-\u206f\u3000-\u303f\uff00-\uff0f\uff1a-\uff20\ufeff\ufffd]+')
    LOOP
        CONTINUE WHEN word = '';
        IF word ~ '^[{CJK}]+$' THEN
            IF length(word) = 1 THEN
                out := out || word;
            ELSE
                FOR n IN 1 .. length(word) - 1 LOOP
                    out := out || substr(word, n, 2);
                END LOOP;
            END IF;
        ELSE
            out := out || left(word, 100);  -- a lexeme may hold 2 KB; a 100-character word is no word anyway
        END IF;
    END LOOP;
    RETURN out;
END $$;

CREATE FUNCTION {SCHEMA}.keyword_literal(lexeme text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog AS $$
    SELECT '''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || ''''
$$;

-- The lexemes with their positions (capped at 16,383, tsvector's largest), weighted.
CREATE FUNCTION {SCHEMA}.keyword_vector(source text, weight "char") RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog AS $$
    SELECT coalesce(setweight((
        SELECT string_agg({SCHEMA}.keyword_literal(l) || ':' || least(n, 16383), ' ')
        FROM unnest({SCHEMA}.keyword_lexemes(source)) WITH ORDINALITY AS u(l, n))::tsvector, weight), ''::tsvector)
$$;

-- The query of a text's words joined by `op` ('&', '|' or '<->' for a phrase); NULL when it holds no word.
CREATE FUNCTION {SCHEMA}.keyword_query(source text, op text) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog AS $$
    SELECT nullif(string_agg({SCHEMA}.keyword_literal(l), ' ' || op || ' ' ORDER BY n), '')::tsquery
    FROM unnest({SCHEMA}.keyword_lexemes(source)) WITH ORDINALITY AS u(l, n)
$$;

-- Which of the query text's words a document holds.
CREATE FUNCTION {SCHEMA}.keyword_matches(document tsvector, source text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog AS $$
    SELECT coalesce(array_agg(DISTINCT l ORDER BY l), '{{}}')
    FROM unnest({SCHEMA}.keyword_lexemes(source)) AS l WHERE l = ANY(tsvector_to_array(document))
$$;

-- The words of a path: its last three folders and the file name without its suffix (every JPEG would match
-- "jpg", and a word every image holds makes a keyword ranking read them all).
CREATE FUNCTION {SCHEMA}.keyword_document(path text, attributes jsonb, caption text, ocr text) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog AS $$
    SELECT {SCHEMA}.keyword_vector(regexp_replace(
               array_to_string((string_to_array(path, '/'))[greatest(1, cardinality(string_to_array(path, '/')) - 3):],
                               ' '), '\.[a-zA-Z0-9]{{1,5}}$', ''), 'A')
        || {SCHEMA}.keyword_vector(
               (SELECT string_agg(key || ' ' || CASE jsonb_typeof(value) WHEN 'string' THEN value #>> '{{}}'
                                                     ELSE value::text END, ' ')
                FROM jsonb_each(coalesce(attributes, '{{}}'))), 'B')
        || {SCHEMA}.keyword_vector(caption, 'B')
        || {SCHEMA}.keyword_vector(ocr, 'C')
$$;
"""

_TABLE = rf"""
CREATE TABLE {SCHEMA}.image_words (
    image_id bigint PRIMARY KEY REFERENCES {SCHEMA}.images (id) ON DELETE CASCADE,
    caption text,
    ocr_text text,
    ocr_reason text,
    document tsvector NOT NULL DEFAULT ''::tsvector,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX image_words_document_idx ON {SCHEMA}.image_words USING gin (document);

CREATE FUNCTION {SCHEMA}.image_words_document() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    SELECT {SCHEMA}.keyword_document(i.path, i.attributes, NEW.caption, NEW.ocr_text) INTO NEW.document
    FROM {SCHEMA}.images i WHERE i.id = NEW.image_id;
    NEW.updated_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER image_words_document BEFORE INSERT OR UPDATE ON {SCHEMA}.image_words
    FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.image_words_document();

CREATE FUNCTION {SCHEMA}.images_words() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {SCHEMA}.image_words (image_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    ELSE
        UPDATE {SCHEMA}.image_words SET image_id = image_id WHERE image_id = NEW.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER images_words_insert AFTER INSERT ON {SCHEMA}.images
    FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.images_words();
CREATE TRIGGER images_words_update AFTER UPDATE OF path, attributes ON {SCHEMA}.images
    FOR EACH ROW WHEN (OLD.path IS DISTINCT FROM NEW.path OR OLD.attributes IS DISTINCT FROM NEW.attributes)
    EXECUTE FUNCTION {SCHEMA}.images_words();
"""

_FILL = f"INSERT INTO {SCHEMA}.image_words (image_id) SELECT id FROM {SCHEMA}.images"

# On a Citus coordinator whose images are distributed already (`imagedb db distribute` at an older schema):
# image_words is placed like `db distribute` places it (imagedb/store/citus.py), co-located with images by image
# id, before its foreign key (Citus takes one between distributed tables only once both are placed), and the
# triggers need citus.enable_unsafe_triggers (they write only the co-located shard, so they are safe here).
_KEY = f"image_id bigint PRIMARY KEY REFERENCES {SCHEMA}.images (id) ON DELETE CASCADE,"
assert _KEY in _TABLE
# One statement at a time: Citus sends a DDL statement's whole query string on to the workers, and a string of
# several would run the coordinator-only ones (create_distributed_table) there too.
_CITUS = [
    "SET LOCAL citus.enable_unsafe_triggers = on",
    "SET LOCAL citus.multi_shard_modify_mode = 'sequential'",
    *re.split(r";\s*\n(?=CREATE )", _TABLE.replace(_KEY, "image_id bigint PRIMARY KEY,").strip().rstrip(";")),
    f"SELECT create_distributed_table('{SCHEMA}.image_words', 'image_id', colocate_with => '{SCHEMA}.images')",
    f"ALTER TABLE {SCHEMA}.image_words ADD CONSTRAINT image_words_image_id_fkey"
    f" FOREIGN KEY (image_id) REFERENCES {SCHEMA}.images (id) ON DELETE CASCADE",
]

_HYBRID = rf"""
CREATE FUNCTION {HYBRID.replace("(text, text, integer)", "")}(
    query text, collection_name text, k integer DEFAULT 10
)
RETURNS TABLE (image_id bigint, path text, score double precision, vector_rank integer, keyword_rank integer,
               keyword_score real, fused double precision, matched text[])
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, {SCHEMA}, public AS $$
DECLARE
    c record;
    q halfvec;
    words tsquery;
BEGIN
    IF k IS NULL OR k NOT BETWEEN 1 AND {MAX_K} THEN
        RAISE EXCEPTION 'imagedb_search_hybrid: k must be between 1 and {MAX_K}, not %', coalesce(k::text, 'NULL');
    END IF;
    IF query IS NULL OR btrim(query) = '' THEN
        RAISE EXCEPTION 'imagedb_search_hybrid: the query is empty';
    END IF;
    IF length(query) > 10000 THEN
        RAISE EXCEPTION 'imagedb_search_hybrid: the query has % characters, at most 10000', length(query);
    END IF;
    SELECT col.id, col.model_id, m.dim, coalesce(t.ef_search, 100) AS ef INTO c
    FROM {SCHEMA}.collections col JOIN {SCHEMA}.embedding_models m ON m.id = col.model_id
    LEFT JOIN {SCHEMA}.search_tuning t ON t.collection_id = col.id AND t.model_id = col.model_id
    WHERE col.name = collection_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'imagedb_search_hybrid: no collection named %',
            {SCHEMA}.printable(quote_nullable(collection_name));
    END IF;
    -- A text never searched has no vector here (embedding it needs the model): the keyword ranking alone.
    SELECT te.embedding INTO q FROM {SCHEMA}.text_embeddings te
    WHERE te.model_id = c.model_id AND te.text_sha256 = sha256(convert_to(query, 'UTF8'));
    words := {SCHEMA}.keyword_query(query, '|');
    PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
    PERFORM set_config('hnsw.ef_search', greatest(c.ef, least(greatest(k, {POOL}), 1000))::text, true);
    RETURN QUERY EXECUTE format(
        'WITH vec AS MATERIALIZED ('
        ' SELECT e.image_id AS id, (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s))::float8 AS distance'
        ' FROM {SCHEMA}.embeddings e JOIN {SCHEMA}.images i ON i.id = e.image_id'
        ' WHERE $1 IS NOT NULL AND e.model_id = $2 AND i.collection_id = $3'
        ' AND (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)) <> ''NaN'''
        ' ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s) LIMIT $4),'
        ' vr AS (SELECT id, distance, row_number() OVER (ORDER BY distance, id)::int AS r FROM vec),'
        ' kw AS MATERIALIZED (SELECT w.image_id AS id, ts_rank_cd(w.document, $5) AS rank'
        '  FROM {SCHEMA}.image_words w JOIN {SCHEMA}.images i ON i.id = w.image_id'
        '  WHERE $5 IS NOT NULL AND w.document @@ $5 AND i.collection_id = $3'
        '  ORDER BY rank DESC, w.image_id LIMIT $4),'
        ' kr AS (SELECT id, rank, row_number() OVER (ORDER BY rank DESC, id)::int AS r FROM kw),'
        ' fused AS (SELECT coalesce(vr.id, kr.id) AS id, vr.distance, vr.r AS vr, kr.r AS kr, kr.rank,'
        '  coalesce(1.0 / ({RRF_K} + vr.r), 0) + coalesce(1.0 / ({RRF_K} + kr.r), 0) AS fused'
        '  FROM vr FULL JOIN kr ON kr.id = vr.id)'
        ' SELECT f.id, i.path, CASE WHEN $1 IS NULL THEN NULL ELSE 1 - coalesce(f.distance,'
        '   (SELECT (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s))::float8 FROM {SCHEMA}.embeddings e'
        '    WHERE e.image_id = f.id AND e.model_id = $2)) END,'
        '  f.vr, f.kr, f.rank, f.fused::float8, {SCHEMA}.keyword_matches(w.document, $6)'
        ' FROM fused f JOIN {SCHEMA}.images i ON i.id = f.id JOIN {SCHEMA}.image_words w ON w.image_id = f.id'
        ' ORDER BY f.fused DESC, f.id LIMIT $7', c.dim)
    USING q, c.model_id, c.id, greatest(k, {POOL}), words, query, k;
END $$;
REVOKE ALL ON FUNCTION {HYBRID} FROM PUBLIC;
COMMENT ON FUNCTION {HYBRID} IS
    'The k best images of a collection for a text by reciprocal rank fusion (1/(60+rank) summed) of the vector'
    ' ranking (the text''s cached vector: search it once with imagedb search, else keywords alone and score NULL)'
    ' and the keyword ranking (ts_rank_cd over file name, folders, attributes, captions, OCR text). score: cosine'
    ' similarity; vector_rank, keyword_rank: 1-based ranks, NULL when not among that ranking''s candidates;'
    ' matched: the query''s words the image holds (CJK as character bigrams).';
"""

_GRANT = rf"""
DO $$
DECLARE r text;
BEGIN
    FOR r IN SELECT DISTINCT a.grantee::regrole::text FROM pg_proc p, aclexplode(p.proacl) a
             WHERE p.oid = 'public.imagedb_search_text(text, text, integer, text)'::regprocedure
               AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION {HYBRID} TO %s', r);
    END LOOP;
    -- Writers (roles that may insert images) write image_words through the triggers and ingest.
    FOR r IN SELECT DISTINCT a.grantee::regrole::text FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = '{SCHEMA}.images'::regclass AND a.privilege_type = 'INSERT'
               AND a.grantee <> 0 AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON {SCHEMA}.image_words TO %s', r);
    END LOOP;
END $$;
"""


def _images_distributed() -> bool:
    bind = op.get_bind()
    if bind.exec_driver_sql("SELECT to_regclass('pg_catalog.pg_dist_partition')").scalar() is None:
        return False
    return bool(
        bind.exec_driver_sql(
            f"SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = to_regclass('{SCHEMA}.images')"
        ).scalar()
    )


def upgrade() -> None:
    op.execute(_FUNCTIONS)
    for statement in _CITUS if _images_distributed() else [_TABLE]:
        op.execute(statement)
    op.execute(_FILL)
    op.execute(_HYBRID)
    op.execute(_GRANT)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {HYBRID}")
    op.execute(f"DROP TRIGGER IF EXISTS images_words_insert ON {SCHEMA}.images")
    op.execute(f"DROP TRIGGER IF EXISTS images_words_update ON {SCHEMA}.images")
    op.execute(f"DROP TABLE IF EXISTS {SCHEMA}.image_words")
    for name in (
        "images_words()",
        "image_words_document()",
        "keyword_document(text, jsonb, text, text)",
        "keyword_matches(tsvector, text)",
        "keyword_query(text, text)",
        'keyword_vector(text, "char")',
        "keyword_literal(text)",
        "keyword_lexemes(text)",
    ):
        op.execute(f"DROP FUNCTION IF EXISTS {SCHEMA}.{name}")
