"""The SQL text searches use text queries' own ef_search: `imagedb_search_text` and `imagedb_search_hybrid` read
the collection's `text_ef_search` (what `imagedb tune` measured on text queries; revision `textrecall`) where there
is one, as the CLI and the API already did, instead of the image queries' smaller one. At 1M vectors the text-like
queries of bench/results/text_recall_1000000.txt need about twice the ef_search of image queries for recall@10 0.95.

Revision ID: textef
Revises: quietlog
Create Date: 2026-12-07
"""

from alembic import op

revision = "textef"
down_revision = "quietlog"
branch_labels = None
depends_on = None

SEARCH_TEXT = "public.imagedb_search_text(text, text, integer, text)"
SEARCH_HYBRID = "public.imagedb_search_hybrid(text, text, integer)"
_TEXT_EF = (
    "(SELECT t.text_ef_search FROM imagedb_internal.search_tuning t JOIN imagedb_internal.collections col"
    " ON col.id = t.collection_id AND col.model_id = t.model_id WHERE col.name = collection_name)"
)
# (function, text before, text after): each must be found exactly once.
_CHANGES = (
    (
        SEARCH_TEXT,
        "public.imagedb_nearest(q, collection_name, k, NULL, NULL, imagedb_search_text.metric)",
        f"public.imagedb_nearest(q, collection_name, k, {_TEXT_EF}, NULL, imagedb_search_text.metric)",
    ),
    (SEARCH_HYBRID, "coalesce(t.ef_search, 100) AS ef", "coalesce(t.text_ef_search, t.ef_search, 100) AS ef"),
)


def _rewrite(function: str, old: str, new: str) -> None:
    row = (
        op.get_bind()
        .exec_driver_sql(f"SELECT prosrc, pg_get_functiondef(oid) FROM pg_proc WHERE oid = '{function}'::regprocedure")
        .fetchone()
    )
    assert row is not None
    source, definition = row
    if new in source:
        return
    assert source.count(old) == 1, f"{function}: its body is not the one revision textef changes"
    op.get_bind().exec_driver_sql(definition.replace(source, source.replace(old, new), 1).replace("%", "%%"))


def upgrade() -> None:
    for function, old, new in _CHANGES:
        _rewrite(function, old, new)


def downgrade() -> None:
    for function, old, new in _CHANGES:
        _rewrite(function, new, old)
