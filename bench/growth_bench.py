"""How HNSW build time, index size and query latency grow with the collection, and the isotropic hard case; and
whether `imagedb tune`'s ef_search keeps recall at its target as the collection grows, where a fixed one does not.

For each size: binary COPY into `halfvec(512)`, HNSW build (m 16, ef_construction 64, maintenance_work_mem 2GB,
2 processes), then 200 held-out queries at ef_search 40 and 160: recall@10 against exact numpy, server-side p50
(EXPLAIN ANALYZE). Clustered data as in vectors_bench.py, and isotropic (uniform on the sphere, no structure: the
hard case for any graph index) at the first size.

Tuned vs fixed: imagedb.tuning.choose_ef_search (what `imagedb tune` runs) picks the smallest ef_search whose
recall@10 meets 0.95 on 100 queries made from stored vectors as `imagedb tune` makes them (tuning.held_out_like);
recall is then measured on the 200 held-out queries at that ef_search and at fixed 40 and 100.

    python bench/growth_bench.py [--sizes 100000 250000 500000] [--no-isotropic]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    DIM,
    clustered_vectors,
    connect,
    copy_vectors,
    exact_top_k,
    isotropic_vectors,
    recall_at_k,
    server_ms,
    write_results,
)

from imagedb.pg.database import open_connection, resolve_url
from imagedb.pg.embedded import stop_embedded
from imagedb.tuning import RecallPoint, choose_ef_search, held_out_like

TARGET = 0.95
TUNING_QUERIES = 100


def _held_out_recall(url: str, queries: np.ndarray, truth: list[list[int]], ef: int) -> float:
    from pgvector import HalfVector

    conn = connect(url)
    conn.execute(f"SET hnsw.ef_search = {ef}; SET hnsw.iterative_scan = relaxed_order")
    found = [
        [r[0] for r in conn.execute("SELECT id FROM g ORDER BY embedding <=> %s LIMIT 10", (HalfVector(q),))]
        for q in queries
    ]
    conn.close()
    return recall_at_k(found, truth)


def _tuned(url: str, data: np.ndarray, queries: np.ndarray, truth: list[list[int]]) -> dict[str, object]:
    """The ef_search `imagedb tune` would choose on this table, and held-out recall there and at fixed values."""
    from pgvector import HalfVector

    rng = np.random.default_rng(5)
    picks = rng.choice(len(data), TUNING_QUERIES, replace=False)
    scores = data[picks] @ data.T
    scores[np.arange(len(picks)), picks] = -2.0  # each stored vector's nearest other one
    tuning_queries = held_out_like(data[picks], scores.max(1))
    tuning_truth = exact_top_k(data, tuning_queries)
    conn = connect(url)
    conn.execute("SET hnsw.iterative_scan = relaxed_order")

    def measure(ef: int) -> RecallPoint:
        conn.execute(f"SET hnsw.ef_search = {ef}")
        found, times = 0, []
        for q, expected in zip(tuning_queries, tuning_truth, strict=True):
            started = time.perf_counter()
            rows = conn.execute("SELECT id FROM g ORDER BY embedding <=> %s LIMIT 10", (HalfVector(q),)).fetchall()
            times.append((time.perf_counter() - started) * 1000)
            found += len({r[0] for r in rows} & set(expected))
        return RecallPoint(ef, found / (10 * len(picks)), statistics.median(times))

    started = time.perf_counter()
    ef, met, points = choose_ef_search(measure, TARGET)
    seconds = time.perf_counter() - started
    conn.close()
    row: dict[str, object] = {"tuned_ef_search": ef, "tuned_met": met, "tuning_s": seconds}
    row["tuning_points"] = [p.__dict__ for p in points]
    for label, value in (("fixed40", 40), ("fixed100", 100), ("tuned", ef)):
        row[f"held_out_recall_{label}"] = _held_out_recall(url, queries, truth, value)
    print(
        f"{'':<10} {len(data):>8,}  tuned ef_search {ef} (tuning {seconds:.0f} s): held-out recall@10"
        f" fixed 40 {row['held_out_recall_fixed40']:.3f}, fixed 100 {row['held_out_recall_fixed100']:.3f},"
        f" tuned {row['held_out_recall_tuned']:.3f}",
        flush=True,
    )
    return row


def _split(points: np.ndarray, queries: int) -> tuple[np.ndarray, np.ndarray]:
    return points[:-queries], points[-queries:]


def _measure(url: str, name: str, data: np.ndarray, queries: np.ndarray, tune: bool = False) -> dict[str, object]:
    conn = connect(url)
    conn.execute("SET maintenance_work_mem = '2GB'; SET max_parallel_maintenance_workers = 1")
    conn.execute(f"DROP TABLE IF EXISTS g; CREATE TABLE g (id int, embedding halfvec({DIM}))")
    copy_rate = copy_vectors(conn, "g", "halfvec", data)
    started = time.perf_counter()
    conn.execute(
        "CREATE INDEX g_idx ON g USING hnsw (embedding halfvec_cosine_ops) WITH (m = 16, ef_construction = 64)"
    )
    build = time.perf_counter() - started
    size = conn.execute("SELECT pg_relation_size('g_idx')").fetchone()[0]  # type: ignore[index]
    conn.close()
    truth = exact_top_k(data, queries)
    row: dict[str, object] = {
        "data": name,
        "n": len(data),
        "copy_vectors_per_s": copy_rate,
        "build_s": build,
        "index_mb": size / 1e6,
    }
    for ef in (40, 160):
        found = []
        check = connect(url)
        check.execute(f"SET hnsw.ef_search = {ef}")
        from pgvector import HalfVector

        for q in queries:
            found.append(
                [
                    r[0]
                    for r in check.execute(
                        "SELECT id FROM g ORDER BY embedding <=> %s LIMIT 10", (HalfVector(q),)
                    ).fetchall()
                ]
            )
        check.close()
        row[f"recall_ef{ef}"] = recall_at_k(found, truth)
        row[f"server_p50_ms_ef{ef}"] = statistics.median(server_ms(url, "g", "halfvec", queries[:50], ef))
    print(
        f"{name:<10} {len(data):>8,} {build:>8.1f} s {size / 1e6:>7.0f} MB"
        f"  ef40: recall {row['recall_ef40']:.3f} p50 {row['server_p50_ms_ef40']:.2f} ms"
        f"  ef160: recall {row['recall_ef160']:.3f} p50 {row['server_p50_ms_ef160']:.2f} ms",
        flush=True,
    )
    if tune:
        row.update(_tuned(url, data, queries, truth))
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 250_000, 500_000])
    parser.add_argument("--no-isotropic", action="store_true", help="Skip the isotropic case (no tuning there).")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="imagedb-growth-bench-"))
    open_connection(None, home).close()
    url = resolve_url(None, home)
    print(f"{'data':<10} {'vectors':>8} {'build':>10} {'index':>10}")
    rows = []
    if not args.no_isotropic:
        rows.append(
            _measure(url, "isotropic", *_split(isotropic_vectors(args.sizes[0] + 200, np.random.default_rng(1)), 200))
        )
    for n in args.sizes:
        rows.append(
            _measure(url, "clustered", *_split(clustered_vectors(n + 200, np.random.default_rng(0)), 200), tune=True)
        )
    stop_embedded(home)
    write_results("growth_tuned.json" if args.no_isotropic else "growth.json", rows)


if __name__ == "__main__":
    main()
