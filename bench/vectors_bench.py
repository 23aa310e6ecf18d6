"""pgvector inside imagedb against its peers: loading, HNSW build, query latency and recall, exact scans.

Everything runs in this process on the embedded PostgreSQL, with hnswlib and numpy as the baselines, on N
L2-normalised 512-d vectors drawn around 1,000 cluster centres (CLIP embeddings cluster too) plus 200 held-out
queries. Exact top-10 by numpy is the ground truth for recall.

    python bench/vectors_bench.py [--n 100000] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
from common import (
    DIM,
    RESULTS,
    K,
    clustered_vectors,
    connect,
    copy_vectors,
    exact_top_k,
    recall_at_k,
    server_ms,
    write_results,
)
from pgvector import HalfVector, Vector

from imagedb.pg.database import open_connection, resolve_url
from imagedb.pg.embedded import stop_embedded


def loading(conn: psycopg.Connection, data: np.ndarray, quick: bool) -> dict[str, float]:
    out = {}
    for kind in ("halfvec", "vector"):
        conn.execute(f"DROP TABLE IF EXISTS load_{kind}; CREATE TABLE load_{kind} (id int, embedding {kind}({DIM}))")
        out[f"COPY binary, {kind}"] = copy_vectors(conn, f"load_{kind}", kind, data)
    sample = data[: 2000 if quick else 10000]
    conn.execute("TRUNCATE load_halfvec")
    started = time.perf_counter()
    with conn.cursor() as cur:
        for i in range(0, len(sample), 1000):
            cur.executemany(
                "INSERT INTO load_halfvec VALUES (%s, %s)",
                [(j, HalfVector(v)) for j, v in enumerate(sample[i : i + 1000], start=i)],
            )
    out["batched INSERT (executemany), halfvec"] = len(sample) / (time.perf_counter() - started)
    small = data[:2000]
    conn.autocommit = False
    started = time.perf_counter()
    for i, v in enumerate(small):
        conn.execute("INSERT INTO load_halfvec VALUES (%s, %s)", (i, HalfVector(v)))
        conn.commit()
    out["row-by-row INSERT + commit, halfvec"] = len(small) / (time.perf_counter() - started)
    conn.autocommit = True
    conn.execute(
        f"DROP TABLE IF EXISTS load_idx; CREATE TABLE load_idx (id int, embedding halfvec({DIM}));"
        " CREATE INDEX ON load_idx USING hnsw (embedding halfvec_cosine_ops)"
    )
    out["COPY binary into a table with its HNSW index (index during load)"] = copy_vectors(
        conn, "load_idx", "halfvec", data[: 2000 if quick else 10000]
    )
    return out


def builds(conn: psycopg.Connection, data: np.ndarray, quick: bool) -> list[dict[str, object]]:
    conn.execute("SET maintenance_work_mem = '2GB'; SET max_parallel_maintenance_workers = 1")
    variants = [("halfvec", "inline", 16, 64), ("vector", "PLAIN", 16, 64), ("vector", "default (EXTERNAL)", 16, 64)]
    if not quick:
        variants += [("halfvec", "inline", 16, 128), ("vector", "PLAIN", 16, 128)]
    out = []
    for kind, storage, m, efc in variants:
        table = f"b_{kind}_{'plain' if storage == 'PLAIN' else 'ext' if 'EXTERNAL' in storage else 'x'}"
        conn.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int, embedding {kind}({DIM}))")
        if storage == "PLAIN":
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE PLAIN")
        copy_vectors(conn, table, kind, data)
        started = time.perf_counter()
        conn.execute(
            f"CREATE INDEX {table}_idx ON {table} USING hnsw (embedding {kind}_cosine_ops)"
            f" WITH (m = {m}, ef_construction = {efc})"
        )
        seconds = time.perf_counter() - started
        size = conn.execute(f"SELECT pg_relation_size('{table}_idx')").fetchone()[0]  # type: ignore[index]
        out.append(
            {
                "type": kind,
                "storage": storage,
                "m": m,
                "ef_construction": efc,
                "seconds": seconds,
                "index_mb": size / 1e6,
                "table": table,
            }
        )
    return out


def _pg_queries(url: str, table: str, kind: str, queries: np.ndarray, ef: int) -> tuple[list[list[int]], list[float]]:
    conn = connect(url)
    conn.execute(f"SET hnsw.ef_search = {ef}")
    wrap = HalfVector if kind == "halfvec" else Vector
    sql = f"SELECT id FROM {table} ORDER BY embedding <=> %s LIMIT {K}"
    found, latency = [], []
    for q in queries:
        started = time.perf_counter()
        found.append([r[0] for r in conn.execute(sql, (wrap(q),)).fetchall()])
        latency.append(time.perf_counter() - started)
    conn.close()
    return found, latency


def queries_sweep(
    url: str, built: list[dict[str, object]], queries: np.ndarray, truth: list[list[int]], efs: list[int]
) -> list[dict[str, object]]:
    out = []
    for b in built:
        if b["ef_construction"] != 64 or "EXTERNAL" in str(b["storage"]):
            continue
        table, kind = str(b["table"]), str(b["type"])
        for ef in efs:
            found, latency = _pg_queries(url, table, kind, queries, ef)
            server = server_ms(url, table, kind, queries[:50], ef)
            started = time.perf_counter()
            threads = [threading.Thread(target=_pg_queries, args=(url, table, kind, queries, ef)) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            qps2 = 2 * len(queries) / (time.perf_counter() - started)
            out.append(
                {
                    "engine": f"pgvector {kind}",
                    "ef_search": ef,
                    "recall@10": recall_at_k(found, truth),
                    "client_p50_ms": 1000 * statistics.median(latency),
                    "client_p99_ms": 1000 * float(np.percentile(latency, 99)),
                    "server_p50_ms": statistics.median(server),
                    "server_p99_ms": float(np.percentile(server, 99)),
                    "qps_1_client": len(queries) / sum(latency),
                    "qps_2_clients": qps2,
                }
            )
    return out


def hnswlib_peer(data: np.ndarray, queries: np.ndarray, truth: list[list[int]], efs: list[int]) -> tuple[float, list]:
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=DIM)
    index.init_index(max_elements=len(data), M=16, ef_construction=64)
    index.set_num_threads(2)
    started = time.perf_counter()
    index.add_items(data, np.arange(len(data)))
    build = time.perf_counter() - started
    index.set_num_threads(1)
    out = []
    for ef in efs:
        index.set_ef(max(ef, K))
        latency, found = [], []
        for q in queries:
            started = time.perf_counter()
            labels, _ = index.knn_query(q, k=K)
            latency.append(time.perf_counter() - started)
            found.append(labels[0].tolist())
        out.append(
            {
                "engine": "hnswlib (1 thread)",
                "ef_search": ef,
                "recall@10": recall_at_k(found, truth),
                "client_p50_ms": 1000 * statistics.median(latency),
                "client_p99_ms": 1000 * float(np.percentile(latency, 99)),
                "qps_1_client": len(queries) / sum(latency),
            }
        )
    return build, out


def exact_scans(url: str, data: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    conn = connect(url)
    conn.execute("SET enable_indexscan = off; SET max_parallel_workers_per_gather = 0")
    out = {}
    for table, kind in (("b_halfvec_x", "halfvec"), ("b_vector_plain", "vector"), ("b_vector_ext", "vector")):
        out[f"pgvector exact scan, {table}"] = statistics.median(_server_ms_conn(conn, table, kind, queries[:20]))
    conn.close()
    started = time.perf_counter()
    for q in queries[:50]:
        np.argpartition(-(data @ q), K)[:K]
    out["numpy exact scan (float32)"] = 1000 * (time.perf_counter() - started) / 50
    big = data.copy()  # touched once, so the timing below sees no page faults
    started = time.perf_counter()
    for _ in range(5):
        np.copyto(big, data)
    bandwidth = 2 * data.nbytes * 5 / (time.perf_counter() - started)  # read + write
    out["memory-bandwidth floor, float32 (read every vector once)"] = 1000 * data.nbytes / bandwidth
    out["memory-bandwidth floor, halfvec"] = 1000 * data.nbytes / 2 / bandwidth
    return out


def _server_ms_conn(conn: psycopg.Connection, table: str, kind: str, queries: np.ndarray) -> list[float]:
    wrap = HalfVector if kind == "halfvec" else Vector
    return [
        conn.execute(
            f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT id FROM {table} ORDER BY embedding <=> %s LIMIT {K}", (wrap(q),)
        ).fetchone()[0][0]["Execution Time"]  # type: ignore[index]
        for q in queries
    ]


def filtered(url: str, data: np.ndarray, queries: np.ndarray) -> list[dict[str, object]]:
    conn = connect(url)
    conn.execute(
        "ALTER TABLE b_halfvec_x ADD COLUMN grp int; UPDATE b_halfvec_x SET grp = id % 100; ANALYZE b_halfvec_x"
    )
    keep = np.arange(len(data)) % 100 == 0
    truth = exact_top_k(data, queries[:50], keep)
    out = []
    conn.execute("SET enable_seqscan = off; SET enable_sort = off")  # the plan a large table gets: the index
    for mode in ("off", "strict_order", "relaxed_order"):
        conn.execute(f"SET hnsw.iterative_scan = {mode}; SET hnsw.max_scan_tuples = 100000")
        found, latency = [], []
        for q in queries[:50]:
            started = time.perf_counter()
            found.append(
                [
                    r[0]
                    for r in conn.execute(
                        f"SELECT id FROM b_halfvec_x WHERE grp = 0 ORDER BY embedding <=> %s LIMIT {K}",
                        (HalfVector(q),),
                    ).fetchall()
                ]
            )
            latency.append(time.perf_counter() - started)
        out.append(
            {
                "iterative_scan": mode,
                "rows_returned_mean": float(np.mean([len(f) for f in found])),
                "recall@10": recall_at_k(found, truth),
                "client_p50_ms": 1000 * statistics.median(latency),
            }
        )
    conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="20k vectors, fewer variants: about 2 minutes")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.n
    efs = [10, 40, 160] if args.quick else [10, 20, 40, 80, 160, 320]
    rng = np.random.default_rng(0)
    points = clustered_vectors(n + 200, rng)
    data, queries = points[:n], points[n:]
    truth = exact_top_k(data, queries)
    home = Path(tempfile.mkdtemp(prefix="imagedb-vectors-bench-"))
    open_connection(None, home).close()  # starts the server and creates the vector extension
    url = resolve_url(None, home)
    conn = connect(url)
    result: dict[str, object] = {"n": n, "dim": DIM}
    print(f"== {n} x {DIM} vectors ==\n\nloading (vectors/s)")
    result["loading"] = loading(conn, data, args.quick)
    for name, rate in result["loading"].items():  # type: ignore[attr-defined]
        print(f"  {rate:>10,.0f}  {name}")
    result["builds"] = built = builds(conn, data, args.quick)
    peer_build, peer = hnswlib_peer(data, queries, truth, efs)
    result["hnswlib_build_s"] = peer_build
    print("\nHNSW build (2 processes for pgvector, 2 threads for hnswlib)")
    for b in built:
        print(
            f"  {b['seconds']:>6.1f} s  {b['index_mb']:>6.0f} MB  {b['type']} {b['storage']}"
            f" m={b['m']} ef_construction={b['ef_construction']}"
        )
    print(f"  {peer_build:>6.1f} s            hnswlib m=16 ef_construction=64")
    sweep = queries_sweep(url, built, queries, truth, efs) + peer
    result["queries"] = sweep
    print("\nqueries: recall@10, latency p50/p99 (ms), QPS")
    print(
        f"  {'engine':<20} {'ef':>4} {'recall':>6} {'client p50':>10} {'p99':>6} {'server p50':>10} {'p99':>6}"
        f" {'QPS 1':>7} {'QPS 2':>7}"
    )
    for r in sweep:
        print(
            f"  {r['engine']:<20} {r['ef_search']:>4} {r['recall@10']:>6.3f} {r['client_p50_ms']:>10.2f}"
            f" {r['client_p99_ms']:>6.2f} {r.get('server_p50_ms', float('nan')):>10.2f}"
            f" {r.get('server_p99_ms', float('nan')):>6.2f} {r['qps_1_client']:>7.0f}"
            f" {r.get('qps_2_clients', float('nan')):>7.0f}"
        )
    result["exact"] = exact = exact_scans(url, data, queries)
    print("\nexact scan (ms per query)")
    for name, ms in exact.items():
        print(f"  {ms:>8.2f}  {name}")
    result["filtered_1_percent"] = filt = filtered(url, data, queries)
    print("\nfiltered queries, 1% of rows match, limit 10, HNSW plan forced")
    for r in filt:
        print(
            f"  iterative_scan={r['iterative_scan']:<13} rows {r['rows_returned_mean']:>4.1f}"
            f"  recall {r['recall@10']:.3f}  p50 {r['client_p50_ms']:.2f} ms"
        )
    conn.close()
    stop_embedded(home)
    name = "vectors_quick" if args.quick else f"vectors_{n}"
    write_results(f"{name}.json", result)
    _plot(sweep, RESULTS / f"{name}.png", n)


def _plot(sweep: list[dict[str, object]], path: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for engine in sorted({str(r["engine"]) for r in sweep}):
        rows = [r for r in sweep if r["engine"] == engine]
        ax.plot([r["recall@10"] for r in rows], [r["qps_1_client"] for r in rows], marker="o", label=engine)
        for r in rows:
            ax.annotate(str(r["ef_search"]), (r["recall@10"], r["qps_1_client"]), fontsize=7)
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries per second, 1 client")
    ax.set_yscale("log")
    ax.set_title(f"{n:,} x {DIM} clustered vectors\nHNSW m=16, ef_construction=64, 2 cores", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
