"""Latency and recall of each measure of `imagedb search --metric` at N images.

N x 512 clustered unit vectors (common.search_set) loaded into imagedb's own tables as ingest loads them, with the
HNSW index imagedb builds; then, per measure, 50 image queries and 50 text-like queries through
Store.search.nearest (the statement `imagedb search` runs: k = 10, ef_search 100, iterative scan): the client-side
median and 90th percentile ms (the transaction and its set_config calls included), and recall@10 against the exact
top 10 in that measure computed by numpy on the vectors as stored (halfvec). Beside them, the exact Pearson scan
docs/sql.md gives SQL users (no index).

--skew S adds to every vector (queries too) a random multiple, of standard deviation S, of the all-ones direction
before normalising it again. Pearson ignores that direction and cosine does not, so skewed vectors are what make
the two rank differently (the clustered vectors, isotropic around their centres, barely do): a stress test of
Pearson's re-ranking.

    python bench/metric_bench.py [--n 100000] [--skew 0.0 0.5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import DIM, K, image_record, search_set, unit, write_results
from pgvector import HalfVector

from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.request import METRICS
from imagedb.store import Store

QUERIES = 50
BATCH = 5000
EF_SEARCH = 100  # imagedb's default

# docs/sql.md's exact Pearson for unit vectors: every row scanned.
PEARSON_SCAN = (
    "SELECT e.image_id, (-(e.embedding::halfvec(512) <#> %(q)s) - (e.embedding::halfvec(512) <#> o.ones)"
    " * (%(q)s <#> o.ones) / 512) / sqrt((1 - (e.embedding::halfvec(512) <#> o.ones) ^ 2 / 512)"
    " * (1 - (%(q)s <#> o.ones) ^ 2 / 512)) AS pearson"
    " FROM embeddings e, (SELECT array_fill(1::real, ARRAY[512])::halfvec(512) AS ones) o WHERE e.model_id = %(m)s"
    " ORDER BY pearson DESC LIMIT 10"
)


def _skewed(x: np.ndarray, skew: float, rng: np.random.Generator) -> np.ndarray:
    if not skew:
        return x
    ones = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)
    return unit(x + (skew * rng.standard_normal((len(x), 1))).astype(np.float32) * ones)


class Exact:
    """The true top K positions in each measure, by numpy, on the vectors as stored (halfvec)."""

    def __init__(self, data: np.ndarray) -> None:
        self.stored = data.astype(np.float16).astype(np.float32)
        self.squares = np.einsum("ij,ij->i", self.stored, self.stored)
        self.centred = self.stored - self.stored.mean(axis=1, keepdims=True)
        self.centred /= np.linalg.norm(self.centred, axis=1, keepdims=True)

    def top(self, metric: str, query: np.ndarray) -> set[int]:
        q = query.astype(np.float16).astype(np.float32)
        if metric == "pearson":
            qc = q - q.mean()
            score = self.centred @ (qc / np.linalg.norm(qc))
        elif metric == "euclidean":
            score = -(self.squares - 2 * (self.stored @ q))  # minus the squared distance, less the constant |q|^2
        elif metric == "inner":
            score = self.stored @ q
        else:
            score = (self.stored @ q) / np.sqrt(self.squares)
        return set(np.argpartition(-score, K)[:K].tolist())


def _load(store: Store, name: str, data: np.ndarray) -> tuple[object, int, float]:
    model_id = store.models.ensure_model(name, "", DIM)
    collection = store.models.create_collection(name, model_id)
    run_id = store.images.start_run(collection.id)
    params = store.index.drop_hnsw_index(model_id)
    now = datetime.now(timezone.utc)
    started = time.perf_counter()
    for start in range(0, len(data), BATCH):
        stop = min(start + BATCH, len(data))
        records = [image_record(f"/{name}/{i:07d}.jpg", f"{i:064x}", now) for i in range(start, stop)]
        store.images.write_batch(collection.id, model_id, run_id, records, list(data[start:stop]), [])
    store.conn.execute("SET max_parallel_maintenance_workers = 1")
    store.index.restore_hnsw_index(model_id, DIM, params)
    store.conn.execute("ANALYZE images; ANALYZE embeddings")
    first = store.conn.execute("SELECT min(id) FROM images WHERE collection_id = %s", (collection.id,)).fetchone()[0]  # type: ignore[index]
    return store.models.get_collection(name), int(first), time.perf_counter() - started


def _run(store: Store, n: int, skew: float) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    data, images, texts = search_set(n, 0.6, rng)
    data, images, texts = (_skewed(x, skew, rng) for x in (data, images, texts))
    collection, first, load_s = _load(store, f"metric_{int(skew * 100)}", data)
    print(f"  n {n}  skew {skew}: loaded and indexed in {load_s:.0f} s", flush=True)
    exact = Exact(data)
    rows: list[dict[str, object]] = []
    for kind, queries in (("image", images[:QUERIES]), ("text", texts[:QUERIES])):
        for metric in METRICS:
            times, recall = [], []
            for q in queries:
                started = time.perf_counter()
                hits = store.search.nearest(collection, q, K, EF_SEARCH, metric=metric)  # type: ignore[arg-type]
                times.append(1000 * (time.perf_counter() - started))
                recall.append(len({h.image_id - first for h in hits} & exact.top(metric, q)) / K)
            rows.append(_row(n, skew, kind, metric, times, recall))
        times, recall = [], []
        for q in queries[:10]:
            started = time.perf_counter()
            found = store.conn.execute(PEARSON_SCAN, {"q": HalfVector(q), "m": collection.model_id}).fetchall()  # type: ignore[attr-defined]
            times.append(1000 * (time.perf_counter() - started))
            recall.append(len({r[0] - first for r in found} & exact.top("pearson", q)) / K)
        store.conn.rollback()
        rows.append(_row(n, skew, kind, "pearson, exact scan (docs/sql.md)", times, recall))
    return rows


def _row(n: int, skew: float, kind: str, metric: str, times: list[float], recall: list[float]) -> dict[str, object]:
    row = {
        "n": n,
        "skew": skew,
        "queries": kind,
        "metric": metric,
        "p50_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "recall@10": float(np.mean(recall)),
    }
    print(
        f"  {kind:<5} {metric:<36} p50 {row['p50_ms']:>7.2f} ms  p90 {row['p90_ms']:>7.2f} ms"
        f"  recall@10 {row['recall@10']:.3f}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--skew", type=float, nargs="+", default=[0.0, 0.5])
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="imagedb-metric-bench-"))
    store = Store(open_connection(None, home))
    try:
        rows = [row for skew in args.skew for row in _run(store, args.n, skew)]
    finally:
        store.close()
        stop_embedded(home)
    write_results(f"metric_{args.n}.json", {"n": args.n, "k": K, "ef_search": EF_SEARCH, "rows": rows})


if __name__ == "__main__":
    main()
