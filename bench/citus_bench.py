"""One PostgreSQL against a Citus cluster of a coordinator and two workers, on the same clustered vectors.

Both run on this machine from the embedded server with Citus built in (bench/citus_local.py): "1 node" is one server
holding a plain table, "2 workers" a coordinator and two workers holding it distributed by id (`--shards` shards,
each with its own HNSW index). The vectors are bench/common.py's clustered 512-d set, as halfvec, with a `cat`
column (10 values) for the filtered queries. Per setup: load rate (binary COPY, through the coordinator for the
cluster), HNSW build time (m 16, ef_construction 64), then for image-like and text-like queries, unfiltered and
with `cat = 3` (a tenth of the rows, iterative scan), recall@10 against numpy's exact answer and client-side p50/p99
latency (a round trip through the coordinator included) at several ef_search values, each set with SET LOCAL in
the query's transaction, as imagedb does (imagedb.store.settings).

    python bench/citus_bench.py [--n 100000] [--shards 8] [--queries 200] [--cluster-only]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import QUERIES, K, connect, exact_top_k, recall_at_k, search_set, write_results
from pgvector import HalfVector

from imagedb.store.settings import set_local

_spec = importlib.util.spec_from_file_location("citus_local", Path(__file__).parent / "citus_local.py")
citus_local: Any = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["citus_local"] = citus_local
_spec.loader.exec_module(citus_local)  # type: ignore[union-attr]

EF = (20, 40, 100, 200)
CATEGORIES = 10
SETTINGS = {"maintenance_work_mem": "'1GB'", "shared_buffers": "'512MB'"}


def load(url: str, data: np.ndarray, cats: np.ndarray, shards: int | None) -> dict[str, float]:
    conn = connect(url)
    conn.execute("DROP TABLE IF EXISTS bench_vectors")
    conn.execute("CREATE TABLE bench_vectors (id bigint PRIMARY KEY, cat int NOT NULL, embedding halfvec(512))")
    if shards:
        conn.execute("SELECT create_distributed_table('bench_vectors', 'id', shard_count => %s)", (shards,))
    started = time.perf_counter()
    with conn.cursor().copy("COPY bench_vectors (id, cat, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["bigint", "integer", "halfvec"])
        for i, (c, v) in enumerate(zip(cats, data, strict=True)):
            copy.write_row((i, int(c), HalfVector(v)))
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    conn.execute(
        "CREATE INDEX ON bench_vectors USING hnsw (embedding halfvec_cosine_ops) WITH (m = 16, ef_construction = 64)"
    )
    built = time.perf_counter() - started
    conn.execute("CREATE INDEX ON bench_vectors (cat)")
    conn.execute("ANALYZE bench_vectors")
    conn.close()
    return {"load_vectors_per_s": len(data) / loaded, "load_s": loaded, "hnsw_build_s": built}


def search(url: str, queries: np.ndarray, ef: int, cat: int | None) -> tuple[list[list[int]], list[float]]:
    conn = connect(url)
    where = "" if cat is None else "WHERE cat = %(cat)s"
    statement = f"SELECT id FROM bench_vectors {where} ORDER BY embedding <=> %(q)s LIMIT {K}"
    found, times = [], []
    for q in queries:
        started = time.perf_counter()
        with conn.transaction():
            settings: dict[str, str | int] = {"hnsw.ef_search": ef}
            if cat is not None:
                settings |= {"hnsw.iterative_scan": "relaxed_order", "hnsw.max_scan_tuples": 20000}
            set_local(conn, settings)
            rows = conn.execute(statement, {"q": HalfVector(q), "cat": cat}, prepare=False).fetchall()
        times.append((time.perf_counter() - started) * 1000)
        found.append([r[0] for r in rows])
    conn.close()
    return found, times


def measure(url: str, sets: dict[str, np.ndarray], truth: dict[tuple[str, bool], list[list[int]]]) -> list[dict]:
    rows = []
    for (kind, filtered), expected in truth.items():
        for ef in EF:
            search(url, sets[kind][:10], ef, 3 if filtered else None)  # warm the caches and connections
            found, times = search(url, sets[kind], ef, 3 if filtered else None)
            rows.append(
                {
                    "queries": kind,
                    "filter": "cat = 3" if filtered else None,
                    "ef_search": ef,
                    "recall_at_10": round(recall_at_k(found, expected), 4),
                    "p50_ms": round(float(np.percentile(times, 50)), 2),
                    "p99_ms": round(float(np.percentile(times, 99)), 2),
                }
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--queries", type=int, default=QUERIES)
    parser.add_argument("--cluster-only", action="store_true", help="Measure the 2-worker cluster alone.")
    args = parser.parse_args()
    if not citus_local.installed():
        # Said and skipped, not failed: run_all.sh runs this on machines without Citus too.
        print("Citus is not installed in the embedded server: python bench/citus_local.py build CITUS_SOURCE")
        return
    rng = np.random.default_rng(0)
    data, image, text = search_set(args.n, 0.6, rng)
    cats = rng.integers(0, CATEGORIES, len(data))
    sets = {"image": image[: args.queries], "text": text[: args.queries]}
    truth = {}
    for kind, queries in sets.items():
        truth[(kind, False)] = exact_top_k(data, queries)
        truth[(kind, True)] = exact_top_k(data, queries, cats == 3)
    results: dict[str, Any] = {"n": args.n, "dim": data.shape[1], "shards": args.shards, "queries": args.queries}
    setups = (("2 workers", 2),) if args.cluster_only else (("1 node", 0), ("2 workers", 2))
    for name, workers in setups:
        with tempfile.TemporaryDirectory(prefix="citus-bench-") as folder:
            cluster = citus_local.start(Path(folder), workers=workers, port=58432, settings=SETTINGS)
            try:
                url = cluster.url()
                setup = load(url, data, cats, args.shards if workers else None)
                print(name, setup, flush=True)
                setup["searches"] = measure(url, sets, truth)
                results[name] = setup
            finally:
                citus_local.stop(Path(folder))
    print(write_results(f"citus_{args.n}_{args.shards}shards{'_cluster' if args.cluster_only else ''}.json", results))


if __name__ == "__main__":
    main()
