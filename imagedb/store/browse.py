"""Browsing a collection without a query: its images newest first, a page at a time, and the counts by format,
camera, year, collection and DICOM code that the page filters by.

The WHERE clause is the search's own (request.FILTERS, through Filters.clauses), so a filter means the same in a
search and in a listing. Pages are read by keyset (the date and id of the last image shown), not by OFFSET: a page
deep in a large collection costs what the first one does, and an image ingested meanwhile does not shift the pages
after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from psycopg import sql

from imagedb.request import IMAGE_DATE, Filters
from imagedb.store.base import Part

# Values listed per facet, by count: a collection from many cameras would otherwise list every one of them.
MAX_FACET_VALUES = 20
MAX_YEARS = 100  # the newest; a year is a short label

# The columns of the facets that GROUPING SETS counts in one scan, as (name, expression over i and d).
_FACETS = (
    # Ingest stored multi-picture JPEGs as MPO before it stored them as JPEG; the format filter matches both.
    ("format", "CASE WHEN i.format = 'MPO' THEN 'JPEG' ELSE i.format END"),
    ("camera", "nullif(concat_ws(' ', i.camera_make, i.camera_model), '')"),
    ("year", f"extract(year FROM {IMAGE_DATE})::integer"),
    ("modality", "d.modality"),
    ("body_part", "d.body_part"),
)


@dataclass(frozen=True)
class Listed:
    """One image of a listing."""

    id: int
    path: str
    date: datetime  # taken, else the file's time; in UTC
    format: str
    width: int
    height: int


def _where(filters: Filters) -> tuple[sql.Composable, dict[str, Any]]:
    clauses, params = filters.clauses()
    return sql.SQL("").join(sql.SQL(" AND {}").format(c) for c in clauses), params


class BrowseStore(Part):
    def newest(
        self, collection_id: int, filters: Filters, limit: int, before: tuple[datetime, int] | None = None
    ) -> list[Listed]:
        """At most `limit` images of the collection that pass `filters`, newest first (ties: the higher id first),
        starting after the key `before` (the date and id of the last image of the previous page)."""
        where, params = _where(filters)
        if before is not None:
            where = sql.SQL("{} AND (" + IMAGE_DATE + ", i.id) < (%(before_date)s, %(before_id)s)").format(where)
            params.update(before_date=before[0].astimezone(timezone.utc).replace(tzinfo=None), before_id=before[1])
        statement = sql.SQL(
            "SELECT i.id, i.path, " + IMAGE_DATE + " AS image_date, i.format, i.width, i.height FROM images i"
            " WHERE i.collection_id = %(collection_id)s{where}"
            " ORDER BY image_date DESC, i.id DESC LIMIT %(limit)s"
        ).format(where=where)
        params.update(collection_id=collection_id, limit=limit)
        rows = self.conn.execute(statement, params).fetchall()
        return [
            Listed(int(i), path, date.replace(tzinfo=timezone.utc), fmt, int(w), int(h))
            for i, path, date, fmt, w, h in rows
        ]

    def facets(self, collection_id: int, filters: Filters) -> tuple[int, dict[str, list[tuple[Any, int]]]]:
        """How many of the collection's images pass `filters`, and how many of those have each format, camera,
        year, DICOM modality and body part (the most frequent MAX_FACET_VALUES of each; the newest MAX_YEARS
        years). Images without a camera or a DICOM code are not counted under that facet."""
        where, params = _where(filters)
        columns = sql.SQL(", ").join(sql.SQL(f"{expr} AS {name}") for name, expr in _FACETS)
        names = [name for name, _ in _FACETS]
        statement = sql.SQL(
            "SELECT {grouping}, {names}, count(*) FROM (SELECT {columns} FROM images i"
            " LEFT JOIN dicom_images d ON d.image_id = i.id WHERE i.collection_id = %(collection_id)s{where}) x"
            " GROUP BY GROUPING SETS ({sets}, ())"
        ).format(
            grouping=sql.SQL("GROUPING({})").format(sql.SQL(", ").join(map(sql.Identifier, names))),
            names=sql.SQL(", ").join(map(sql.Identifier, names)),
            columns=columns,
            where=where,
            sets=sql.SQL(", ").join(sql.SQL("({})").format(sql.Identifier(n)) for n in names),
        )
        params["collection_id"] = collection_id
        total = 0
        counts: dict[str, list[tuple[Any, int]]] = {name: [] for name in names}
        for row in self.conn.execute(statement, params).fetchall():
            grouping, values, count = row[0], row[1:-1], int(row[-1])
            if grouping == 2 ** len(names) - 1:  # the empty grouping set: every image
                total = count
                continue
            # GROUPING's bits are set for the columns not grouped by: the one clear bit names the facet.
            at = next(n for n in range(len(names)) if not grouping & (1 << (len(names) - 1 - n)))
            if values[at] is not None:
                counts[names[at]].append((values[at], count))
        for name, found in counts.items():
            if name == "year":
                found.sort(key=lambda vc: -vc[0])
                del found[MAX_YEARS:]
            else:
                found.sort(key=lambda vc: (-vc[1], str(vc[0])))
                del found[MAX_FACET_VALUES:]
        return total, counts

    def collection_counts(self, filters: Filters) -> list[tuple[str, int]]:
        """Every collection, by name, with how many of its images pass `filters`."""
        where, params = _where(filters)
        statement = sql.SQL(
            "SELECT c.name, count(i.id) FROM collections c"
            " LEFT JOIN images i ON i.collection_id = c.id{where} GROUP BY c.name ORDER BY c.name"
        ).format(where=where)
        return [(name, int(n)) for name, n in self.conn.execute(statement, params).fetchall()]
