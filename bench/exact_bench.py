"""Exact scans: what PostgreSQL offers for a query that reads every vector, against numpy.

An exact plan is what a selective filter, a small collection or a recall check gets. On N x 512 clustered vectors
in imagedb's own embeddings table (loaded through Store.write_batch, no HNSW index so every plan is a scan), the
median server time (EXPLAIN ANALYZE) of the top-10 query for 20 queries:
- parallel workers per gather 0, 1, 2 (the default is 2; the machine has 2 cores);
- the operator: cosine distance `<=>` (imagedb's) or negative inner product `<#>` (same order on unit vectors),
  alone or for 40 candidates re-ranked by `<=>`;
- a binary pre-filter: Hamming distance on binary_quantize() for 400 candidates, then exact re-ranking;
beside numpy (float32 matrix-vector product + argpartition) and a memory-bandwidth floor.

    python bench/exact_bench.py [--n 100000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import DIM, K, image_record, search_set, write_results
from pgvector import HalfVector

from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store

VARIANTS = {
    "cosine <=>": "SELECT e.image_id FROM embeddings e WHERE e.model_id = %(m)s"
    " ORDER BY e.embedding::halfvec(512) <=> %(q)s LIMIT 10",
    "inner product <#>": "SELECT e.image_id FROM embeddings e WHERE e.model_id = %(m)s"
    " ORDER BY e.embedding::halfvec(512) <#> %(q)s LIMIT 10",
    # The cast to halfvec(512) matches the HNSW index's expression; an exact scan needs no index, and the cast
    # checks (and copies) every row.
    "cosine <=>, no cast": "SELECT e.image_id FROM embeddings e WHERE e.model_id = %(m)s"
    " ORDER BY e.embedding <=> %(q)s LIMIT 10",
    "inner product <#> (40), no cast, re-ranked by <=>": "SELECT image_id FROM (SELECT e.image_id, e.embedding"
    " FROM embeddings e WHERE e.model_id = %(m)s ORDER BY e.embedding <#> %(q)s LIMIT 40) c"
    " ORDER BY c.embedding <=> %(q)s LIMIT 10",
    # Unit vectors stored as halfvec are unit only to about 1e-3, so the inner product's order can differ from the
    # cosine's at near-ties: re-ranking its top 40 by <=> gives the cosine answer at the inner product's cost.
    "inner product <#> (40), re-ranked by <=>": "SELECT image_id FROM (SELECT e.image_id, e.embedding FROM embeddings e"
    " WHERE e.model_id = %(m)s ORDER BY e.embedding::halfvec(512) <#> %(q)s LIMIT 40) c"
    " ORDER BY c.embedding::halfvec(512) <=> %(q)s LIMIT 10",
    "binary pre-filter (400) + exact <=>": "SELECT image_id FROM (SELECT e.image_id, e.embedding FROM embeddings e"
    " WHERE e.model_id = %(m)s ORDER BY binary_quantize(e.embedding::halfvec(512))::bit(512)"
    " <~> binary_quantize(%(q)s)::bit(512) LIMIT 400) c ORDER BY c.embedding::halfvec(512) <=> %(q)s LIMIT 10",
}


def _load(store: Store, data: np.ndarray) -> int:
    model_id = store.models.ensure_model("exact", "", DIM)
    collection = store.models.create_collection("exact", model_id)
    run_id = store.images.start_run(collection.id)
    store.index.drop_hnsw_index(model_id)  # every plan a scan
    now = datetime.now(timezone.utc)
    for start in range(0, len(data), 5000):
        stop = min(start + 5000, len(data))
        records = [image_record(f"/x/{i}.jpg", f"{i:064x}", now) for i in range(start, stop)]
        store.images.write_batch(collection.id, model_id, run_id, records, list(data[start:stop]), [])
    store.conn.execute("VACUUM ANALYZE embeddings")
    return model_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    data, queries, _ = search_set(args.n, 0.6, np.random.default_rng(0))
    home = Path(tempfile.mkdtemp(prefix="imagedb-exact-bench-"))
    store = Store(open_connection(None, home))
    model_id = _load(store, data)
    first = store.conn.execute("SELECT min(image_id) FROM embeddings WHERE model_id = %s", (model_id,)).fetchone()[0]  # type: ignore[index]
    truth = [set(np.argpartition(-(data @ q), K)[:K].tolist()) for q in queries[:20]]
    rows = []
    for workers in (0, 1, 2):
        store.conn.execute(f"SET max_parallel_workers_per_gather = {workers}")
        for name, statement in VARIANTS.items():
            times, recall = [], []
            for q, t in zip(queries[:20], truth, strict=True):
                params = {"m": model_id, "q": HalfVector(q)}
                plan = store.conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params).fetchone()[0]  # type: ignore[index]
                times.append(plan[0]["Execution Time"])
                found = {r[0] - first for r in store.conn.execute(statement, params).fetchall()}
                recall.append(len(found & t) / K)
            rows.append(
                {
                    "workers": workers,
                    "variant": name,
                    "server_p50_ms": statistics.median(times),
                    "recall@10": float(np.mean(recall)),
                }  # fmt: skip
            )
            print(
                f"  workers {workers}  {name:<50} {rows[-1]['server_p50_ms']:>7.2f} ms"
                f"  recall {rows[-1]['recall@10']:.3f}",
                flush=True,
            )
    store.close()
    stop_embedded(home)
    started = time.perf_counter()
    for q in queries[:50]:
        np.argpartition(-(data @ q), K)[:K]
    numpy_ms = 1000 * (time.perf_counter() - started) / 50
    big = data.copy()
    started = time.perf_counter()
    for _ in range(5):
        np.copyto(big, data)
    bandwidth = 2 * data.nbytes * 5 / (time.perf_counter() - started)
    floor = 1000 * data.nbytes / 2 / bandwidth
    print(f"  numpy exact (float32) {numpy_ms:.2f} ms; memory floor for halfvec {floor:.2f} ms")
    write_results("exact.json", {"n": args.n, "variants": rows, "numpy_ms": numpy_ms, "halfvec_floor_ms": floor})


if __name__ == "__main__":
    main()
