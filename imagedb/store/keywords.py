"""Keyword search over image_words (migration 0018): the words of each image, its caption and OCR text, and the
keyword and hybrid (reciprocal rank fusion) rankings. The words themselves are made in SQL (keyword_lexemes), so
documents, queries and the readers' SQL function cut text the same way."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from pgvector import HalfVector
from psycopg import sql

from imagedb.request import IMAGE_DATE, Filters
from imagedb.store.base import Part
from imagedb.store.records import Collection

RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009): an image scores 1/(60 + rank) per ranking
MIN_POOL = 100  # candidates each ranking reads before fusing, at least the page's depth


@dataclass(frozen=True)
class WordHit:
    """A result of a keyword or hybrid ranking, with why it matched."""

    image_id: int
    path: str
    score: float | None  # cosine similarity to the query vector; None without one (keywords alone)
    date: datetime
    vector_rank: int | None  # 1-based among the vector candidates; None when not among them
    keyword_rank: int | None  # 1-based among the keyword matches; None when its words do not match
    keyword_score: float | None  # ts_rank_cd of its words for the query (weights: name, attributes, caption, OCR)
    fused: float  # the sum of 1 / (60 + rank) over both rankings
    matched: tuple[str, ...]  # the query's words it holds (CJK as character bigrams)


class KeywordsStore(Part):
    def lexemes(self, text: str) -> list[str]:
        """The words a text is cut into, as documents and queries are."""
        row = self.conn.execute("SELECT keyword_lexemes(%s)", (text,)).fetchone()
        return list(row[0]) if row and row[0] else []

    def missing_captions(self, collection_id: int, after: int, limit: int) -> list[tuple[int, str, str]]:
        """(id, path, format) of images whose caption was never read, by id after `after`."""
        rows = self.conn.execute(
            "SELECT i.id, i.path, i.format FROM images i JOIN image_words w ON w.image_id = i.id"
            " WHERE i.collection_id = %s AND w.caption IS NULL AND i.id > %s ORDER BY i.id LIMIT %s",
            (collection_id, after, limit),
        ).fetchall()
        return [(int(i), p, f) for i, p, f in rows]

    def missing_ocr(self, collection_id: int, after: int, limit: int, retry: bool = False) -> list[tuple[int, str]]:
        """(id, path) of images never read by OCR (with `retry`, also those it failed on), by id after `after`."""
        failed = sql.SQL(" OR w.ocr_reason IS NOT NULL" if retry else "")
        rows = self.conn.execute(
            sql.SQL(
                "SELECT i.id, i.path FROM images i JOIN image_words w ON w.image_id = i.id"
                " WHERE i.collection_id = %s AND ((w.ocr_text IS NULL AND w.ocr_reason IS NULL){})"
                " AND i.id > %s ORDER BY i.id LIMIT %s"
            ).format(failed),
            (collection_id, after, limit),
        ).fetchall()
        return [(int(i), p) for i, p in rows]

    def dicom_descriptions(self, image_ids: list[int]) -> dict[int, str]:
        """The words of a DICOM image's kept header: modality, body part, manufacturer and model, and (stored only
        in a --keep-phi collection) the study, series and protocol descriptions."""
        rows = self.conn.execute(
            "SELECT d.image_id, concat_ws(' ', d.modality, d.body_part, d.header ->> 'Manufacturer',"
            " d.header ->> 'ManufacturerModelName', d.header ->> 'StudyDescription',"
            " d.header ->> 'SeriesDescription', d.header ->> 'ProtocolName')"
            " FROM dicom_images d WHERE d.image_id = ANY(%s)",
            (image_ids,),
        ).fetchall()
        return {int(i): text for i, text in rows}

    def set_captions(self, captions: dict[int, str]) -> None:
        """Store the captions read (an empty text: read, none found); the triggers remake the documents."""
        if captions:
            self.conn.execute(
                "UPDATE image_words w SET caption = u.c FROM unnest(%s::bigint[], %s::text[]) AS u(id, c)"
                " WHERE w.image_id = u.id",
                (list(captions), list(captions.values())),
            )

    def set_ocr(self, image_id: int, text: str | None, reason: str | None) -> None:
        """Store what OCR read of an image (an empty text: no text found), or why it failed."""
        self.conn.execute(
            "UPDATE image_words SET ocr_text = %s, ocr_reason = %s WHERE image_id = %s", (text, reason, image_id)
        )

    def refresh(self, collection_id: int) -> int:
        """Remake every document of a collection from what is stored (a row for each image that has none first);
        the number of images."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO image_words (image_id) SELECT id FROM images WHERE collection_id = %s"
                " ON CONFLICT DO NOTHING",
                (collection_id,),
            )
            cur = self.conn.execute(
                "UPDATE image_words w SET caption = w.caption FROM images i"
                " WHERE i.id = w.image_id AND i.collection_id = %s",
                (collection_id,),
            )
        return cur.rowcount

    def counts(self, collection_id: int) -> dict[str, int]:
        row = self.conn.execute(
            "SELECT count(*), count(w.caption), count(*) FILTER (WHERE w.caption <> ''), count(w.ocr_text),"
            " count(*) FILTER (WHERE w.ocr_text <> ''), count(w.ocr_reason)"
            " FROM images i JOIN image_words w ON w.image_id = i.id WHERE i.collection_id = %s",
            (collection_id,),
        ).fetchone()
        assert row is not None
        names = ("images", "captions_read", "with_caption", "ocr_read", "with_text", "ocr_failed")
        return dict(zip(names, (int(v) for v in row), strict=True))

    def explain_ranked(self, collection: Collection, text: str) -> str:
        """EXPLAIN of a keyword ranking: tests assert that it reads the GIN index."""
        statement, params = _ranked_query(collection, None, text, 10, 0, Filters())
        rows = self.conn.execute(sql.SQL("EXPLAIN ") + statement, params).fetchall()
        return "\n".join(r[0] for r in rows)

    def ranked(
        self,
        collection: Collection,
        query: np.ndarray | None,
        text: str,
        limit: int,
        offset: int,
        filters: Filters,
        ef_search: int | None = None,
    ) -> list[WordHit]:
        """The images of a collection ranked by the words of `text` (any of them), fused by reciprocal rank with
        the vector ranking of `query` when given; both rankings pass `filters`."""
        statement, params = _ranked_query(collection, query, text, limit, offset, filters)
        with self.conn.transaction():
            self.conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
            if query is not None:
                ef = max(ef_search or 0, min(params["pool"], 1000))
                self.conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef),))
            rows = self.conn.execute(statement, params, prepare=False).fetchall()
        return [
            WordHit(
                int(i), path, None if score is None else float(score), date.replace(tzinfo=timezone.utc),
                vr, kr, None if ks is None else float(ks), float(fused), tuple(matched or ()),
            )
            for i, path, score, date, vr, kr, ks, fused, matched in rows
        ]  # fmt: skip


def _ranked_query(
    collection: Collection, query: np.ndarray | None, text: str, limit: int, offset: int, filters: Filters
) -> tuple[sql.Composed, dict[str, Any]]:
    clauses, params = filters.clauses()
    where = sql.SQL("").join(sql.SQL(" AND {}").format(c) for c in clauses)
    vector = sql.SQL("e.embedding::halfvec({})").format(sql.Literal(collection.dim))
    if query is None:
        vectors = sql.SQL("vr AS (SELECT NULL::bigint AS id, NULL::float8 AS distance, NULL::int AS r WHERE false),")
        score = sql.SQL("NULL::float8")
    else:
        vectors = sql.SQL(
            "vec AS MATERIALIZED (SELECT i.id, ({v} <=> %(q)s)::float8 AS distance"
            " FROM embeddings e JOIN images i ON i.id = e.image_id"
            " WHERE e.model_id = %(model_id)s AND i.collection_id = %(collection_id)s{where}"
            " AND ({v} <=> %(q)s) <> 'NaN' ORDER BY {v} <=> %(q)s LIMIT %(pool)s),"
            " vr AS (SELECT id, distance, row_number() OVER (ORDER BY distance, id)::int AS r FROM vec),"
        ).format(v=vector, where=where)
        score = sql.SQL(
            "1 - coalesce(f.distance, (SELECT ({v} <=> %(q)s)::float8 FROM embeddings e"
            " WHERE e.image_id = f.id AND e.model_id = %(model_id)s))"
        ).format(v=vector)
    statement = sql.SQL(
        # keyword_query is IMMUTABLE: planned with the text's value, it folds to a constant the GIN index takes.
        "WITH {vectors}"
        " kw AS MATERIALIZED (SELECT i.id, ts_rank_cd(w.document, keyword_query(%(text)s, '|')) AS rank"
        "  FROM image_words w JOIN images i ON i.id = w.image_id"
        "  WHERE w.document @@ keyword_query(%(text)s, '|') AND i.collection_id = %(collection_id)s{where}"
        "  ORDER BY rank DESC, i.id LIMIT %(pool)s),"
        " kr AS (SELECT id, rank, row_number() OVER (ORDER BY rank DESC, id)::int AS r FROM kw),"
        " fused AS (SELECT coalesce(vr.id, kr.id) AS id, vr.distance, vr.r AS vr, kr.r AS kr, kr.rank,"
        "  coalesce(1.0 / ({k} + vr.r), 0) + coalesce(1.0 / ({k} + kr.r), 0) AS fused"
        "  FROM vr FULL JOIN kr ON kr.id = vr.id)"
        " SELECT f.id, i.path, {score}, " + IMAGE_DATE + ", f.vr, f.kr, f.rank, f.fused::float8,"
        "  keyword_matches(w.document, %(text)s)"
        " FROM fused f JOIN images i ON i.id = f.id JOIN image_words w ON w.image_id = f.id"
        " ORDER BY f.fused DESC, f.id LIMIT %(limit)s OFFSET %(offset)s"
    ).format(vectors=vectors, where=where, k=sql.Literal(RRF_K), score=score)
    params.update(
        text=text,
        model_id=collection.model_id,
        collection_id=collection.id,
        pool=max(MIN_POOL, limit + offset),
        limit=limit,
        offset=offset,
    )
    if query is not None:
        params["q"] = HalfVector(query)
    return statement, params
