"""The schema as SQLAlchemy tables: alembic's target for `alembic revision --autogenerate`.

The running code does not use the ORM; every statement lives in store.py. A test compares these tables with a
migrated database, so the migrations and this file cannot drift apart.
"""

from __future__ import annotations

from pgvector.sqlalchemy import BIT, HALFVEC
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR

metadata = MetaData()

embedding_models = Table(
    "embedding_models",
    metadata,
    Column("id", Integer, Identity(), primary_key=True),
    Column("name", Text, nullable=False),
    # A pretrained tag ("laion2b_s34b_b79k"), an absolute checkpoint path, or "" for the hub/local-dir schemas.
    Column("pretrained", Text, nullable=False),
    Column("dim", Integer, CheckConstraint("dim > 0", name="embedding_models_dim_check"), nullable=False),
    # Candidates a search reads from the model's binary-quantised index before re-ranking them exactly; NULL when
    # the model has no such index (`imagedb db reindex --quantize binary --rerank N` sets it).
    Column("rerank", Integer, CheckConstraint("rerank > 0", name="embedding_models_rerank_check")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Provenance (NULL for models registered before revision "models", until next used): the weights file's
    # SHA-256 and size (NULL for random weights), the library versions, the image preprocessing (size, mean, std,
    # resize mode, interpolation) and the text tokenizer.
    Column("checkpoint_sha256", Text),
    Column("checkpoint_bytes", BigInteger),
    Column("open_clip_version", Text),
    Column("torch_version", Text),
    Column("preprocess", JSONB),
    Column("tokenizer", Text),
    UniqueConstraint("name", "pretrained", name="embedding_models_name_pretrained_key"),
)

collections = Table(
    "collections",
    metadata,
    Column("id", Integer, Identity(), primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("model_id", Integer, ForeignKey("embedding_models.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Created with --keep-phi: only such a collection may store DICOM headers whole (see imagedb.dicom).
    Column("keep_phi", Boolean, nullable=False, server_default=text("false")),
)

# Every model a collection holds; collections.model_id is the one searches use. ready_at stays NULL while
# `imagedb models add` embeds the collection's images with a new model.
collection_models = Table(
    "collection_models",
    metadata,
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
    Column("model_id", Integer, ForeignKey("embedding_models.id"), primary_key=True),
    Column("added_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("ready_at", DateTime(timezone=True)),
)

images = Table(
    "images",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("mtime", DateTime(timezone=True), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("format", Text, nullable=False),
    Column("taken_at", DateTime(timezone=False)),
    Column("camera_make", Text),
    Column("camera_model", Text),
    Column("orientation", SmallInteger),
    Column("exif", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("attributes", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("ingested_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("dhash", BIT(64)),
    # Not unique: Citus enforces only keys that include `id`; the writer keeps one row per path (migration 0017)
    Index("images_collection_id_path_idx", "collection_id", "path"),
    Index("images_sha256_idx", "sha256"),
    Index("images_dhash_hnsw", "dhash", postgresql_using="hnsw", postgresql_ops={"dhash": "bit_hamming_ops"}),
)

embeddings = Table(
    "embeddings",
    metadata,
    Column("image_id", BigInteger, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("model_id", Integer, ForeignKey("embedding_models.id"), primary_key=True),
    # No fixed dimension: models of different sizes share the table, and each model gets its own partial
    # HNSW index on embedding::halfvec(dim) (created by store.Store.ensure_model).
    Column("embedding", HALFVEC(), nullable=False),
    # The ingest or `models add` run that computed it (NULL for vectors stored before revision "models").
    Column("run_id", BigInteger, ForeignKey("ingest_runs.id", ondelete="SET NULL")),
)

thumbnails = Table(
    "thumbnails",
    metadata,
    Column("image_id", BigInteger, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("jpeg", LargeBinary, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
)

ingest_runs = Table(
    "ingest_runs",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    Column("added", Integer, nullable=False, server_default=text("0")),
    Column("skipped", Integer, nullable=False, server_default=text("0")),
    Column("reused", Integer, nullable=False, server_default=text("0")),
    Column("failed", Integer, nullable=False, server_default=text("0")),
    Column("model_id", Integer, ForeignKey("embedding_models.id", ondelete="SET NULL")),
    Column(
        "command",
        Text,
        CheckConstraint("command IN ('ingest', 'models add')", name="ingest_runs_command_check"),
        nullable=False,
        server_default=text("'ingest'"),
    ),
)

# Text queries embedded once per model (keyed by the text's SHA-256: a btree entry cannot hold a long text).
text_embeddings = Table(
    "text_embeddings",
    metadata,
    Column("model_id", Integer, ForeignKey("embedding_models.id", ondelete="CASCADE"), primary_key=True),
    Column("text_sha256", LargeBinary, primary_key=True),
    Column("text", Text, nullable=False),
    Column("embedding", HALFVEC(), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("text_embeddings_age_idx", "model_id", "created_at"),
)

ingest_errors = Table(
    "ingest_errors",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("run_id", BigInteger, ForeignKey("ingest_runs.id", ondelete="CASCADE"), nullable=False),
    Column("path", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("size_bytes", BigInteger),  # the file as it was when it failed: retried only once it changes
    Column("mtime", DateTime(timezone=True)),
    Index("ingest_errors_run_id_idx", "run_id"),
    Index("ingest_errors_path_idx", "path"),
)

# The files ingests are decoding and storing now; a claim is live while its run holds the session advisory lock
# (0x1A71, run id), so a crashed run's claims are taken over (store/claims.py).
ingest_claims = Table(
    "ingest_claims",
    metadata,
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("run_id", BigInteger, ForeignKey("ingest_runs.id", ondelete="CASCADE"), nullable=False),
    Column("claimed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# What `imagedb forget` removed, which ingest leaves out until `imagedb unforget`: the SHA-256 of the path (never
# the path itself: forget --full leaves it readable nowhere), and the content's when asked (then the same bytes
# under any name stay out).
forgotten = Table(
    "forgotten",
    metadata,
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
    Column("path_sha256", Text, primary_key=True),
    Column("sha256", Text),
    Column("forgotten_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("forgotten_sha256_idx", "collection_id", "sha256"),
)

duplicate_groups = Table(
    "duplicate_groups",
    metadata,
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
    Column("group_no", Integer, nullable=False),
    Column("image_id", BigInteger, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    # An image on another shard under Citus: no foreign key; the statements that delete images delete these rows
    Column("matched_image_id", BigInteger),
    Column(
        "rule",
        Text,
        CheckConstraint("rule IN ('sha256', 'hash', 'clip', 'first')", name="duplicate_groups_rule_check"),
        nullable=False,
    ),
    Column("distance", Float(53)),
    Column("found_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("duplicate_groups_group_idx", "collection_id", "group_no"),
)

watches = Table(
    "watches",
    metadata,
    Column("id", Integer, Identity(), primary_key=True),
    Column("label", Text),
    Column("path", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column(
        "max_distance",
        Integer,
        CheckConstraint("max_distance BETWEEN 0 AND 64", name="watches_max_distance_check"),
        nullable=False,
    ),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

watch_hashes = Table(
    "watch_hashes",
    metadata,
    Column("watch_id", Integer, ForeignKey("watches.id", ondelete="CASCADE"), primary_key=True),
    Column("variant", SmallInteger, primary_key=True),
    Column("hash", BIT(64), nullable=False),
    Index("watch_hashes_hnsw", "hash", postgresql_using="hnsw", postgresql_ops={"hash": "bit_hamming_ops"}),
)

# Keyed by (watch_id, image_id), which holds the image id its table would be distributed by under Citus
# (docs/scaling.md); id only orders the hits.
watch_hits = Table(
    "watch_hits",
    metadata,
    Column("id", BigInteger, Identity(), nullable=False),
    Column("watch_id", Integer, ForeignKey("watches.id", ondelete="CASCADE"), primary_key=True),
    Column("image_id", BigInteger, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("distance", Integer, nullable=False),
    Column("found_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Per collection and model: when its relevance sample was drawn (and at what size), its tuned ef_search, and the
# last recall measured (`imagedb tune`, `imagedb db check --recall`).
search_tuning = Table(
    "search_tuning",
    metadata,
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
    Column("model_id", Integer, ForeignKey("embedding_models.id"), primary_key=True),
    Column("sampled_at", DateTime(timezone=True)),
    Column("sampled_count", BigInteger),
    Column(
        "ef_search",
        Integer,
        CheckConstraint("ef_search BETWEEN 1 AND 1000", name="search_tuning_ef_search_check"),
    ),
    Column("target_recall", Float(53)),
    Column("recall", Float(53)),
    Column("recall_ef_search", Integer),
    Column("recall_count", BigInteger),
    Column("recall_at", DateTime(timezone=True)),
    # Text queries' own: they sit far from the images (CLIP's modality gap) and need a wider search (tuning.py).
    Column(
        "text_ef_search",
        Integer,
        CheckConstraint("text_ef_search BETWEEN 1 AND 1000", name="search_tuning_text_ef_search_check"),
    ),
    Column("text_recall", Float(53)),
    Column("text_recall_ef_search", Integer),
    Column("text_queries", Text),  # what text recall was measured on: "N cached texts" or "N probes"
)

# The fixed random sample of a collection's images whose scores are the baseline of relevance (imagedb/relevance.py).
relevance_samples = Table(
    "relevance_samples",
    metadata,
    Column("collection_id", Integer, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
    Column("model_id", Integer, ForeignKey("embedding_models.id"), primary_key=True),
    Column("image_id", BigInteger, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Index("relevance_samples_image_id_idx", "image_id"),
)

# The kept, de-identified fields of DICOM images (imagedb.dicom); UIDs only as keyed hashes (imagedb_uid_hash).
dicom_images = Table(
    "dicom_images",
    metadata,
    Column("image_id", BigInteger, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("modality", Text),
    Column("body_part", Text),
    Column("study_uid_hash", Text),
    Column("series_uid_hash", Text),
    Column("instance_uid_hash", Text),
    Column("study_year", Integer),
    Column("study_date", Date),  # only with --keep-dates
    Column("frame", Integer, nullable=False, server_default=text("1")),
    Column("frames", Integer, nullable=False, server_default=text("1")),
    Column("header", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Index("dicom_images_series_idx", "series_uid_hash"),
)

# The key of the UID hashes, as HMAC's two padded keys; one row, readable by the owner only.
dicom_secret = Table(
    "dicom_secret",
    metadata,
    Column(
        "id",
        Boolean,
        CheckConstraint("id", name="dicom_secret_id_check"),
        primary_key=True,
        server_default=text("true"),
    ),
    Column("inner_pad", LargeBinary, nullable=False),
    Column("outer_pad", LargeBinary, nullable=False),
)

# The words in and around an image for keyword search (imagedb/keywords.py, docs/keywords.md): the caption and
# keywords read from the file and the OCR text (NULL until read), and `document`, their tsvector with the file
# name, folders and attributes, which triggers keep current (migration 0018).
image_words = Table(
    "image_words",
    metadata,
    Column("image_id", BigInteger, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("caption", Text),
    Column("ocr_text", Text),
    Column("ocr_reason", Text),
    Column("document", TSVECTOR, nullable=False, server_default=text("''::tsvector")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("image_words_document_idx", "document", postgresql_using="gin"),
)
