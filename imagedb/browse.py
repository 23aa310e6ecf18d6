"""Browsing without a query: a collection's images newest first, a page at a time, and the counts a page filters by
(facets). The filters are the search's own (imagedb.request), checked the same way."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from imagedb.collection import get_collection
from imagedb.errors import InvalidInput
from imagedb.request import MAX_ID, Filters, settings
from imagedb.store import Store
from imagedb.store.browse import Listed

# Facets listed for every collection; the DICOM ones only where the images that pass the filters include DICOM.
FACETS = ("format", "camera", "year", "collection")
DICOM_FACETS = ("modality", "body_part")


@dataclass(frozen=True)
class Page:
    images: list[Listed]
    next: str | None  # the cursor of the next page; None on the last one


@dataclass(frozen=True)
class Facets:
    total: int  # the collection's images that pass the filters
    counts: dict[str, list[tuple[Any, int]]]  # facet -> (value, images), most first (years: newest first)


def cursor(image: Listed) -> str:
    """Where the page after `image` starts: its date (UTC, to the microsecond) and id, as text for a URL."""
    return f"{image.date.replace(tzinfo=None).isoformat(timespec='microseconds')}_{image.id}"


def parse_cursor(text: str) -> tuple[datetime, int]:
    """A cursor as cursor() wrote it; InvalidInput for anything else."""
    date, _, image_id = text.strip().rpartition("_")
    try:
        when = datetime.fromisoformat(date)
        parsed = None if when.tzinfo else (when.replace(tzinfo=timezone.utc), int(image_id))
    except ValueError:
        parsed = None
    if parsed is None or not 1 <= parsed[1] <= MAX_ID or len(text) > 64:
        raise InvalidInput(
            f"cursor {text[:64]!r} is not one this server gave: pass the `next` value of the previous page as it is"
        )
    return parsed


def _checked(name: str, value: Any) -> Any:
    """`value` as the search's own setting `name` checks it (request.SearchRequest declares its bounds)."""
    param = next(p for p in settings() if p.name == name)
    return param.check(value) if param.check is not None else value


def newest(store: Store, collection: str, filters: Filters, limit: int, after: str | None = None) -> Page:
    """Up to `limit` images of the collection that pass `filters`, newest first (taken, else the file's time),
    starting after the cursor `after` (a page's `next`)."""
    limit = _checked("limit", limit)
    key = parse_cursor(after) if after else None
    target = get_collection(store, collection)
    found = store.browse.newest(target.id, filters.checked(), limit + 1, key)
    # One more than asked tells whether a page follows: the last page says so, and no empty page is ever served.
    images = found[:limit]
    return Page(images, cursor(images[-1]) if len(found) > limit else None)


def facets(store: Store, collection: str, filters: Filters) -> Facets:
    """The counts of the collection's images that pass `filters`, by format, camera, year, collection (the
    filters applied to every collection) and, where any of them are DICOM, modality and body part."""
    target = get_collection(store, collection)
    checked = filters.checked()
    total, counts = store.browse.facets(target.id, checked)
    shown = {name: counts[name] for name in FACETS if name in counts}
    shown["collection"] = [
        (name, n) for name, n in store.browse.collection_counts(checked) if n > 0 or name == collection
    ]
    for name in DICOM_FACETS:
        if counts[name]:
            shown[name] = counts[name]
    return Facets(total, shown)
