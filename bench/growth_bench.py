"""How HNSW build time, index size and query latency grow with the collection, and the isotropic hard case.

For each size: binary COPY into `halfvec(512)`, HNSW build (m 16, ef_construction 64, maintenance_work_mem 2GB,
2 processes), then 200 held-out queries at ef_search 40 and 160: recall@10 against exact numpy, server-side p50
(EXPLAIN ANALYZE). Clustered data as in vectors_bench.py, and isotropic (uniform on the sphere, no structure: the
hard case for any graph index) at the first size.

    python bench/growth_bench.py [--sizes 100000 250000 500000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from results_dir import RESULTS
from vectors_bench import DIM, _connect, _copy, _data, _exact, _recall, _server_ms

from imagedb import db


def _isotropic(n: int, queries: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    points = rng.standard_normal((n + queries, DIM)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points[:n], points[n:]


def _measure(url: str, name: str, data: np.ndarray, queries: np.ndarray) -> dict[str, object]:
    conn = _connect(url)
    conn.execute("SET maintenance_work_mem = '2GB'; SET max_parallel_maintenance_workers = 1")
    conn.execute(f"DROP TABLE IF EXISTS g; CREATE TABLE g (id int, embedding halfvec({DIM}))")
    copy_rate = _copy(conn, "g", "halfvec", data)
    started = time.perf_counter()
    conn.execute(
        "CREATE INDEX g_idx ON g USING hnsw (embedding halfvec_cosine_ops) WITH (m = 16, ef_construction = 64)"
    )
    build = time.perf_counter() - started
    size = conn.execute("SELECT pg_relation_size('g_idx')").fetchone()[0]  # type: ignore[index]
    conn.close()
    truth = _exact(data, queries)
    row: dict[str, object] = {
        "data": name,
        "n": len(data),
        "copy_vectors_per_s": copy_rate,
        "build_s": build,
        "index_mb": size / 1e6,
    }
    for ef in (40, 160):
        found = []
        check = _connect(url)
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
        row[f"recall_ef{ef}"] = _recall(found, truth)
        row[f"server_p50_ms_ef{ef}"] = statistics.median(_server_ms(url, "g", "halfvec", queries[:50], ef))
    print(
        f"{name:<10} {len(data):>8,} {build:>8.1f} s {size / 1e6:>7.0f} MB"
        f"  ef40: recall {row['recall_ef40']:.3f} p50 {row['server_p50_ms_ef40']:.2f} ms"
        f"  ef160: recall {row['recall_ef160']:.3f} p50 {row['server_p50_ms_ef160']:.2f} ms",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 250_000, 500_000])
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="imagedb-growth-bench-"))
    db.open_connection(None, home).close()
    url = db.resolve_url(None, home)
    print(f"{'data':<10} {'vectors':>8} {'build':>10} {'index':>10}")
    rows = [_measure(url, "isotropic", *_isotropic(args.sizes[0], 200, np.random.default_rng(1)))]
    for n in args.sizes:
        rows.append(_measure(url, "clustered", *_data(n, 200, np.random.default_rng(0))))
    db.stop_embedded(home)
    (RESULTS / "growth.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
