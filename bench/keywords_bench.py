"""Keyword search at scale: what the words cost at ingest, and keyword and hybrid latency against vectors alone.

N images with names of random words (`/photos/<word>_<word>/IMG_<n>_<word>.jpg`) and random 32-d vectors are
written through Store.write_batch into a fresh embedded server, once with the image_words trigger and once
without it (the write cost of the words), then queried: a keyword ranking alone, a hybrid ranking (vector and
words fused by reciprocal rank) and the vector ranking alone, p50 over the queries.

    python bench/keywords_bench.py --n 50000      # prints a table, writes bench/results/keywords.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import image_record, write_results

from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.request import Filters
from imagedb.store import Store

DIM = 32
# 2,000 four-letter words (letters only: digits would be words of their own); each names about N * 3 / 2000 images.
VOCABULARY = ["".join(chr(97 + n // 26**k % 26) for k in range(3)) + "q" for n in range(2000)]


def _write(store: Store, collection, run: int, start: int, count: int, rng: np.random.Generator) -> float:  # type: ignore[no-untyped-def]
    now = datetime.now(timezone.utc)
    records = []
    for i in range(start, start + count):
        a, b, c = rng.choice(VOCABULARY, 3)
        records.append(image_record(f"/photos/{a}_{b}/IMG_{i}_{c}.jpg", f"{i:064x}", now))
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    started = time.perf_counter()
    store.images.write_batch(collection.id, collection.model_id, run, records, list(vectors), [])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imagedb-keyword-bench-"))
    store = Store(open_connection(None, work / "home"))
    rng = np.random.default_rng(0)
    try:
        collection = store.models.create_collection("default", store.models.ensure_model("bench", "", DIM))
        run = store.images.start_run(collection.id)
        batch = 1000
        # The write cost of the words: batches alternately without and with the trigger.
        timings: dict[bool, list[float]] = {True: [], False: []}
        for n, start in enumerate(range(0, args.n, batch)):
            words = n % 2 == 1
            if not words:
                store.conn.execute("ALTER TABLE images DISABLE TRIGGER images_words_insert")
            timings[words].append(_write(store, collection, run, start, min(batch, args.n - start), rng))
            store.conn.execute("ALTER TABLE images ENABLE TRIGGER images_words_insert")
        store.keywords.refresh(collection.id)  # the batches written without words get theirs
        store.conn.execute("VACUUM ANALYZE images")
        store.conn.execute("VACUUM ANALYZE image_words")
        target = collection
        latency: dict[str, list[float]] = {"keywords": [], "hybrid": [], "vector": []}
        for _ in range(args.queries):
            text = " ".join(rng.choice(VOCABULARY, 2))
            query = rng.standard_normal(DIM).astype(np.float32)
            query /= np.linalg.norm(query)
            for name, call in (
                ("keywords", lambda text=text: store.keywords.ranked(target, None, text, 10, 0, Filters())),
                ("hybrid", lambda q=query, text=text: store.keywords.ranked(target, q, text, 10, 0, Filters(), 100)),
                ("vector", lambda q=query: store.search.nearest(target, q, 10, 100)),
            ):
                started = time.perf_counter()
                call()
                latency[name].append(1000 * (time.perf_counter() - started))
        with_words = statistics.median(timings[True]) / batch * 1000
        without = statistics.median(timings[False]) / batch * 1000
        result = {
            "n": args.n,
            "write_ms_per_image_with_words": round(with_words, 4),
            "write_ms_per_image_without_words": round(without, 4),
            "p50_ms": {name: round(statistics.median(v), 3) for name, v in latency.items()},
            "queries": args.queries,
        }
        write_results("keywords.json", result)
        print(f"n={args.n}: writing {with_words:.3f} ms/image with the words, {without:.3f} without")
        for name, value in result["p50_ms"].items():  # type: ignore[union-attr]
            print(f"  {name:<9} p50 {value:.2f} ms")
    finally:
        store.close()
        stop_embedded(work / "home")


if __name__ == "__main__":
    main()
