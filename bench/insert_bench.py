"""Incremental ingest into a big HNSW index: rows/s with 1, 2 and 4 writer connections, and ef_construction.

A model with N x 512 clustered vectors and its HNSW index (imagedb's own load and build); then new rows arrive
through Store.write_batch in batches of 32 (ingest's batch size), each batch one transaction:
- W writers, each into its own collection of the same model (one shared HNSW index; ingest's per-collection write
  lock does not serialise them);
- 2 and 4 writers into the same collection, as one ingest's writers store its batches (per-file locks: batches of
  different files go in at the same time);
- 1 writer after rebuilding the index with ef_construction 32 (half the default);
- the baseline: raw COPY straight into embeddings, 32 rows a transaction, 1 and 2 connections.
Each configuration runs twice and keeps the faster (other work shares the two cores).

    python bench/insert_bench.py [--n 100000] [--rows 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import DIM, image_record, search_set, write_results
from scale_bench import load

from imagedb.pg.database import open_connection, resolve_url
from imagedb.pg.embedded import stop_embedded
from imagedb.store import ImageRecord, Store
from imagedb.store.index import HnswParams


def _records(prefix: str, start: int, count: int) -> list[ImageRecord]:
    now = datetime.now(timezone.utc)
    return [image_record(f"/{prefix}/{i:07d}.jpg", f"{prefix}{i:060x}"[-64:], now) for i in range(start, start + count)]


def writers(url: str, model_name: str, vectors: np.ndarray, count: int, *, same_collection: bool) -> float:
    """Rows/s of `count` writer threads, each on its own connection, sharing `vectors` between them."""
    per = len(vectors) // count
    stores = [Store(open_connection(url)) for _ in range(count)]
    model_id = stores[0].models.ensure_model(model_name, "", DIM)
    targets = []
    for w, store in enumerate(stores):
        name = f"{model_name}-new" if same_collection else f"{model_name}-writer-{w}-{time.monotonic_ns()}"
        collection = store.models.create_collection(name, model_id)
        targets.append((collection, store.images.start_run(collection.id)))
    tag = time.monotonic_ns() % 10**9

    def write(w: int) -> None:
        store, (collection, run_id) = stores[w], targets[w]
        mine = vectors[w * per : (w + 1) * per]
        for start in range(0, len(mine), 32):
            batch = mine[start : start + 32]
            records = _records(f"w{tag}x{w}", start, len(batch))
            store.images.write_batch(collection.id, model_id, run_id, records, list(batch), [])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(count)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = per * count / (time.perf_counter() - started)
    for store in stores:
        store.close()
    return rate


def raw_copy(url: str, model_id: int, vectors: np.ndarray, count: int) -> float:
    """Rows/s of `count` connections each COPYing its share straight into embeddings (no images rows, one
    transaction per 32 rows): what pgvector's inserts alone allow."""
    import psycopg
    from pgvector import HalfVector
    from pgvector.psycopg import register_vector

    per = len(vectors) // count
    base = 10**9 + time.monotonic_ns() % 10**8  # image ids no real row uses (embeddings has no FK check here)

    def write(w: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            register_vector(conn)
            conn.execute("SET session_replication_role = replica")  # skip the images foreign key: pgvector only
            mine = vectors[w * per : (w + 1) * per]
            for start in range(0, len(mine), 32):
                with (
                    conn.transaction(),
                    conn.cursor().copy(
                        "COPY embeddings (image_id, model_id, embedding) FROM STDIN WITH (FORMAT BINARY)"
                    ) as copy,
                ):
                    copy.set_types(["bigint", "integer", "halfvec"])
                    for i, v in enumerate(mine[start : start + 32], start=start):
                        copy.write_row((base + w * per + i, model_id, HalfVector(v)))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(count)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * count / (time.perf_counter() - started)


def measure(url: str, store: Store, collection, new: np.ndarray, label: str) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    rows = []
    raw_copy(url, collection.model_id, new[:256], 1)  # warm-up: the index's pages into shared buffers
    for count in (1, 2):
        rate = max(raw_copy(url, collection.model_id, new, count) for _ in range(2))
        rows.append({"index": label, "writers": count, "collections": "raw COPY into embeddings", "rows_per_s": rate})
        print(f"  {label}: {count} connection(s), raw COPY, 32 rows a transaction: {rate:,.0f} rows/s", flush=True)
    for count in (1, 2, 4):
        rate = max(writers(url, collection.name, new, count, same_collection=False) for _ in range(2))
        rows.append({"index": label, "writers": count, "collections": "one each", "rows_per_s": rate})
        print(f"  {label}: {count} writer(s), own collections: {rate:,.0f} rows/s", flush=True)
    for count in (2, 4):  # one ingest's BatchWriters: batches of disjoint files into one collection at once
        rate = max(writers(url, collection.name, new, count, same_collection=True) for _ in range(2))
        rows.append({"index": label, "writers": count, "collections": "the same", "rows_per_s": rate})
        print(f"  {label}: {count} writers, one collection: {rate:,.0f} rows/s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=2000, help="new rows per measurement")
    args = parser.parse_args()
    data, _, _ = search_set(args.n + args.rows, 0.6, np.random.default_rng(0))
    base, new = data[: args.n], data[args.n :]
    home = Path(tempfile.mkdtemp(prefix="imagedb-insert-bench-"))
    store = Store(open_connection(None, home))
    url = resolve_url(None, home)
    (collection, _), loaded = load(store, "base", base)
    print(f"== {args.n:,} x {DIM} in the index; {args.rows:,} new rows per measurement ==", flush=True)
    rows = measure(url, store, collection, new, "m 16, ef_construction 64")
    store.conn.execute("SET max_parallel_maintenance_workers = 1")
    started = time.perf_counter()
    store.index.rebuild_hnsw_index(collection.model_id, DIM, HnswParams(16, 32))
    rebuild = time.perf_counter() - started
    rate = max(writers(url, collection.name, new, 1, same_collection=False) for _ in range(2))
    rows.append({"index": "m 16, ef_construction 32", "writers": 1, "collections": "one each", "rows_per_s": rate})
    print(f"  m 16, ef_construction 32 (rebuilt in {rebuild:.1f} s): 1 writer: {rate:,.0f} rows/s", flush=True)
    store.close()
    stop_embedded(home)
    write_results(f"insert_{args.n}.json", {"n": args.n, "rows": args.rows, "results": rows})


if __name__ == "__main__":
    main()
