"""A million images on one box: imagedb's own load and index paths at N x 512, halfvec against binary + rerank.

For each data set (clustered like vectors_bench.py; "overlapping": the same centres with three times the spread, so
clusters overlap):
- load: Store.write_batch in batches of 5,000 (images rows, embeddings COPY, empty thumbnails), with the model's
  index dropped first and built after, as a first bulk ingest does (Store.drop_hnsw_index / restore_hnsw_index,
  max_parallel_maintenance_workers = 1: 2 processes on 2 cores);
- the halfvec index: build time, size; recall@10 and server p50/p99 (EXPLAIN ANALYZE of Store.nearest's own
  statement) at each ef_search, image queries (held-out points) and text-like queries (held-out points pushed by
  one fixed offset, as CLIP's text vectors sit apart from its image vectors);
- filtered search (Store.nearest with a format filter) keeping 1% and 10% of rows;
- the binary index (Store.quantize_indexes): build time, size, recall and latency at each rerank;
- hnswlib (m 16, ef_construction 64, 2 threads) on the same vectors, in process.
Results go to scale_<N>.json after every phase (a run stopped early keeps what finished) and a recall-vs-latency
plot to scale_<N>.png.

    python bench/scale_bench.py [--n 1000000] [--sets clustered overlapping] [--no-hnswlib]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import DIM, RESULTS, K, exact_top_k, image_record, recall_at_k, search_set, write_results

from imagedb.pg.database import open_connection, resolve_url
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store
from imagedb.store.index import HnswParams
from imagedb.store.records import Filters
from imagedb.store.search import _nearest_query, effective_ef_search

BATCH = 5000
EFS = [40, 100, 200, 400]
RERANKS = [100, 200, 400]


def _format(i: int) -> str:
    return "PNG" if i % 100 == 0 else "GIF" if i % 10 == 1 else "JPEG"  # 1% PNG, 10% GIF


def load(store: Store, name: str, data: np.ndarray, index: HnswParams | None = None) -> tuple[object, dict[str, float]]:
    """Bulk load `data` as ingest does (index dropped, rows written, index built: imagedb's defaults unless
    `index`); the load and build times and sizes."""
    model_id = store.models.ensure_model(name, "", DIM)
    collection = store.models.create_collection(name, model_id)
    run_id = store.images.start_run(collection.id)
    params = index or store.index.drop_hnsw_index(model_id)
    if index is not None:
        store.index.drop_hnsw_index(model_id)
    now = datetime.now(timezone.utc)
    started = time.perf_counter()
    for start in range(0, len(data), BATCH):
        stop = min(start + BATCH, len(data))
        records = [
            image_record(f"/{name}/{i:07d}.jpg", f"{i:064x}", now, format=_format(i)) for i in range(start, stop)
        ]
        store.images.write_batch(collection.id, model_id, run_id, records, list(data[start:stop]), [])
    loaded = time.perf_counter() - started
    store.conn.execute("SET max_parallel_maintenance_workers = 1")
    started = time.perf_counter()
    store.index.restore_hnsw_index(model_id, DIM, params)
    build = time.perf_counter() - started
    store.conn.execute("ANALYZE images; ANALYZE embeddings")
    # Image ids are assigned in load order: id - first id = position in `data`.
    first = store.conn.execute("SELECT min(id) FROM images WHERE collection_id = %s", (collection.id,)).fetchone()[0]  # type: ignore[index]
    sizes = store.conn.execute(
        "SELECT pg_relation_size(%s), pg_total_relation_size('embeddings'), pg_total_relation_size('images')",
        (f"embeddings_hnsw_{model_id}",),
    ).fetchone()
    return (store.models.get_collection(name), first), {
        "rows_per_s_write_batch": len(data) / loaded,
        "load_s": loaded,
        "halfvec_build_s": build,
        "halfvec_index_mb": sizes[0] / 1e6,  # type: ignore[index]
        "embeddings_table_mb": sizes[1] / 1e6,  # type: ignore[index]
        "images_table_mb": sizes[2] / 1e6,  # type: ignore[index]
    }


def _search(store: Store, collection, first: int, queries: np.ndarray, ef: int, filters: Filters = Filters()):  # type: ignore[no-untyped-def]
    found, server = [], []
    for q in queries:
        found.append([h.image_id - first for h in store.search.nearest(collection, q, K, ef, filters=filters)])
    for q in queries[:100]:
        statement, params = _nearest_query(collection, q, K, 0, filters)
        with store.conn.transaction():
            store.conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
            store.conn.execute("SELECT set_config('hnsw.max_scan_tuples', '100000', true)")
            store.conn.execute(
                "SELECT set_config('hnsw.ef_search', %s, true)", (str(effective_ef_search(collection, ef)),)
            )
            plan = store.conn.execute(
                b"EXPLAIN (ANALYZE, FORMAT JSON) " + statement.as_bytes(store.conn), params, prepare=False
            ).fetchone()[0]  # type: ignore[index]
        server.append(plan[0]["Execution Time"])
    return found, server


def sweep(store, collection, first, label, image_q, text_q, truths, efs) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    rows = []
    for ef in efs:
        for kind, queries in (("image", image_q), ("text", text_q)):
            found, server = _search(store, collection, first, queries, ef)
            row = {
                "index": label,
                "queries": kind,
                "ef_search": ef,
                "recall@10": recall_at_k(found, truths[kind]),
                "server_p50_ms": statistics.median(server),
                "server_p99_ms": float(np.percentile(server, 99)),
            }
            rows.append(row)
            print(
                f"  {label:<24} {kind:<5} ef {ef:>4}  recall {row['recall@10']:.3f}"
                f"  p50 {row['server_p50_ms']:.2f} ms  p99 {row['server_p99_ms']:.2f} ms",
                flush=True,
            )
    return rows


def filtered(store, collection, first, data, image_q) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    rows = []
    positions = np.arange(len(data))
    for fmt, share in (("PNG", "1%"), ("GIF", "10%")):
        keep = (
            np.array([_format(int(i)) == fmt for i in positions[: len(data)]])
            if len(data) <= 1000
            else ((positions % 100 == 0) if fmt == "PNG" else (positions % 10 == 1))
        )
        truth = exact_top_k(data, image_q[:50], keep)
        for ef in (100, 200):
            found, server = _search(store, collection, first, image_q[:50], ef, Filters(format=fmt))
            row = {
                "filter_keeps": share,
                "ef_search": ef,
                "recall@10": recall_at_k(found, truth),
                "rows_mean": float(np.mean([len(f) for f in found])),
                "server_p50_ms": statistics.median(server),
                "server_p99_ms": float(np.percentile(server, 99)),
            }
            rows.append(row)
            print(
                f"  filter keeps {share:<4} ef {ef:>4}  rows {row['rows_mean']:.1f}  recall {row['recall@10']:.3f}"
                f"  p50 {row['server_p50_ms']:.2f} ms",
                flush=True,
            )
    return rows


def hnswlib_peer(data: np.ndarray, image_q: np.ndarray, text_q: np.ndarray, truths, efs) -> dict[str, object]:  # type: ignore[no-untyped-def]
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=DIM)
    index.init_index(max_elements=len(data), M=16, ef_construction=64)
    index.set_num_threads(2)
    started = time.perf_counter()
    index.add_items(data, np.arange(len(data)))
    build = time.perf_counter() - started
    index.set_num_threads(1)
    rows = []
    for ef in efs:
        index.set_ef(ef)
        for kind, queries in (("image", image_q), ("text", text_q)):
            latency, found = [], []
            for q in queries:
                t = time.perf_counter()
                labels, _ = index.knn_query(q, k=K)
                latency.append(1000 * (time.perf_counter() - t))
                found.append(labels[0].tolist())
            rows.append(
                {
                    "index": "hnswlib (in process)",
                    "queries": kind,
                    "ef_search": ef,
                    "recall@10": recall_at_k(found, truths[kind]),
                    "server_p50_ms": statistics.median(latency),
                    "server_p99_ms": float(np.percentile(latency, 99)),
                }
            )
            print(
                f"  hnswlib {kind:<5} ef {ef:>4} recall {rows[-1]['recall@10']:.3f}"
                f" p50 {rows[-1]['server_p50_ms']:.2f} ms",
                flush=True,
            )
    return {"build_s": build, "queries": rows}


def inserts(url: str, collection, rows: int) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """Rows/s of new images written into this big index with 1, 2 and 4 writers (see insert_bench.py)."""
    from insert_bench import writers

    extra = search_set(rows, 0.6, np.random.default_rng(7))[0]
    out = []
    for count in (1, 2, 4):
        rate = writers(url, collection.name, extra, count, same_collection=False)
        out.append({"writers": count, "rows_per_s": rate})
        print(f"  inserts into the {collection.name} index: {count} writer(s) {rate:,.0f} rows/s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--sets", nargs="+", default=["clustered", "overlapping"])
    parser.add_argument("--no-hnswlib", action="store_true")
    parser.add_argument("--insert-rows", type=int, default=1000, help="new rows per insert measurement")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="imagedb-scale-bench-"))
    store = Store(open_connection(None, home))
    result: dict[str, object] = {"n": args.n, "dim": DIM, "sets": {}}

    def save() -> None:
        write_results(f"scale_{args.n}.json", result)

    for set_name in args.sets:
        spread = {"clustered": 0.6, "overlapping": 1.8}[set_name]
        data, image_q, text_q = search_set(args.n, spread, np.random.default_rng(0))
        truths = {"image": exact_top_k(data, image_q), "text": exact_top_k(data, text_q)}
        entry: dict[str, object] = {"spread": spread}
        result["sets"][set_name] = entry  # type: ignore[index]
        print(f"== {set_name}: {args.n:,} x {DIM} ==", flush=True)
        (collection, first), entry["load"] = load(store, set_name, data)
        print(f"  load {entry['load']}", flush=True)
        save()
        entry["halfvec"] = sweep(store, collection, first, "halfvec", image_q, text_q, truths, EFS)
        save()
        entry["filtered"] = filtered(store, collection, first, data, image_q)
        save()
        if set_name == "clustered":
            entry["inserts"] = inserts(resolve_url(None, home), collection, args.insert_rows)
            save()
        started = time.perf_counter()
        store.conn.execute("SET max_parallel_maintenance_workers = 1")
        store.index.quantize_indexes(RERANKS[0], 16, 64)
        entry["binary_build_s"] = time.perf_counter() - started
        entry["binary_index_mb"] = store.conn.execute(
            "SELECT pg_relation_size(%s) / 1e6", (f"embeddings_hnsw_bit_{collection.model_id}",)
        ).fetchone()[0]  # type: ignore[index]
        print(f"  binary index: {entry['binary_build_s']:.1f} s, {entry['binary_index_mb']:.0f} MB", flush=True)
        rows = []
        for rerank in RERANKS:
            store.conn.execute("UPDATE embedding_models SET rerank = %s WHERE id = %s", (rerank, collection.model_id))
            rows += sweep(
                store,
                store.models.get_collection(set_name),
                first,
                f"binary, rerank {rerank}",
                image_q,
                text_q,
                truths,
                [40],
            )
        entry["binary"] = rows
        # Back to the halfvec index alone for the next set (the binary index would be rebuilt with it otherwise).
        store.index.quantize_indexes(None, 16, 64)
        save()
        if not args.no_hnswlib and set_name == "clustered":
            entry["hnswlib"] = hnswlib_peer(data, image_q, text_q, truths, EFS)
            print(f"  hnswlib build {entry['hnswlib']['build_s']:.1f} s", flush=True)  # type: ignore[index]
            save()
        del data
    store.close()
    stop_embedded(home)
    _plot(result, RESULTS / f"scale_{args.n}.png")


def _plot(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entry = result["sets"].get("clustered")  # type: ignore[attr-defined]
    if not entry or "halfvec" not in entry:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    rows = entry["halfvec"] + entry.get("binary", []) + entry.get("hnswlib", {}).get("queries", [])
    for (index, kind), style in {
        ("halfvec", "image"): "o-", ("halfvec", "text"): "o--",
        ("binary", "image"): "s-", ("binary", "text"): "s--",
        ("hnswlib", "image"): "^-", ("hnswlib", "text"): "^--",
    }.items():  # fmt: skip
        sel = [r for r in rows if str(r["index"]).startswith(index) and r["queries"] == kind]
        if sel:
            label = {"halfvec": "pgvector halfvec", "binary": "binary + rerank", "hnswlib": "hnswlib"}[index]
            ax.plot(
                [r["recall@10"] for r in sel],
                [r["server_p50_ms"] for r in sel],
                style,
                label=f"{label}, {kind} queries",
            )
            for r in sel:
                tag = r["ef_search"] if index != "binary" else str(r["index"]).split()[-1]
                ax.annotate(str(tag), (r["recall@10"], r["server_p50_ms"]), fontsize=7)
    ax.set_xlabel("recall@10")
    ax.set_ylabel("p50 latency, ms (server side; hnswlib in process)")
    ax.set_yscale("log")
    ax.set_title(f"{result['n']:,} x {DIM} clustered vectors, m 16, ef_construction 64, 2 cores", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
