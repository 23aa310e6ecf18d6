"""Browsing without a query at N images: the first page, a page deep in the collection (reached by its cursor, as
the page's "More" reaches it) and the facet counts, unfiltered and with a filter keeping 10%, through the library
calls the API makes (imagedb.browse). No index serves the newest-first order: each page sorts the matching rows
(a top-N sort, no full sort), and the facets read them once (GROUPING SETS).

    python bench/browse_bench.py [--n 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from common import image_record, median_ms, write_results

from imagedb import browse
from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store
from imagedb.store.records import Filters

BATCH = 5000
DIM = 8  # browsing reads no vector


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        try:
            results = run(Store(open_connection(None, home)), n)
        finally:
            stop_embedded(home)
    print(results)
    print(write_results(f"browse_{n}.json", results))


def run(store: Store, n: int) -> dict[str, float | int]:
    model_id = store.models.ensure_model("bench", "", DIM)
    collection = store.models.create_collection("default", model_id)
    run_id = store.images.start_run(collection.id)
    rng = np.random.default_rng(0)
    start = datetime(2015, 1, 1, tzinfo=timezone.utc)
    started = time.perf_counter()
    for first in range(0, n, BATCH):
        stop = min(first + BATCH, n)
        records = [
            image_record(
                f"/photos/{i:07d}.jpg", f"{i:064x}", start + timedelta(minutes=int(rng.integers(0, 5_000_000))),
                format="PNG" if i % 10 == 0 else "JPEG",
            )
            for i in range(first, stop)
        ]  # fmt: skip
        vectors = list(rng.standard_normal((stop - first, DIM)).astype(np.float32))
        store.images.write_batch(collection.id, model_id, run_id, records, vectors, [])
    load_s = time.perf_counter() - started
    store.conn.execute("ANALYZE images")
    page = 48
    cursor: str | None = None
    for _ in range(n // 2 // 1000):  # halfway down, by the largest pages the API serves
        cursor = browse.newest(store, "default", Filters(), 1000, cursor).next
    png = Filters(format="PNG")
    return {
        "images": n,
        "load_s": round(load_s, 1),
        "first_page_ms": median_ms(lambda: browse.newest(store, "default", Filters(), page), 10),
        "page_halfway_ms": median_ms(lambda: browse.newest(store, "default", Filters(), page, cursor), 10),
        "first_page_filtered_10pct_ms": median_ms(lambda: browse.newest(store, "default", png, page), 10),
        "facets_ms": median_ms(lambda: browse.facets(store, "default", Filters()), 5),
        "facets_filtered_10pct_ms": median_ms(lambda: browse.facets(store, "default", png), 5),
    }


if __name__ == "__main__":
    main()
