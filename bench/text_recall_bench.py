"""Recall of text queries at a million vectors, and what `imagedb tune` makes of it.

The data and queries of bench/graph_bench.py (bench/common.py's search_set: clustered vectors, held-out image
queries, text-like queries pushed by one fixed offset as CLIP's text vectors sit apart from its images), loaded
through imagedb's bulk path into a collection whose index is imagedb's dense graph (m 24 / ef_construction 128,
what a collection of a million gets; --graph 16x64 is what one below 250,000 gets). Then:
- sweep: recall@10 and server p50/p99 of image and text-like queries at ef_search 100 to 1000;
- tune: imagedb.tuning.tune on the collection (its own probes: there are no cached texts here), the ef_search it
  stores for image queries and for text queries, and the bench's text-like set searched at the tuned setting.

The loaded home is kept (--home), so a second run skips the load, and the build unless --graph differs
(`--skip-sweep` then runs tune only).

    python bench/text_recall_bench.py [--n 1000000] [--graph 24x128] [--efs 100 200 ...] [--home DIR] [--tag T]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DIM, exact_top_k, recall_at_k, search_set, write_results
from scale_bench import _search, load

from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store
from imagedb.store.index import DENSE_HNSW, HnswParams, hnsw_index_name

EFS = [100, 200, 400, 500, 640, 800, 1000]
NAME = "textrecall"


def prepare(store: Store, home: Path, n: int, build_memory: str, graph: HnswParams) -> dict[str, object]:
    """Load and index once; the queries and their exact answers kept in the home for later runs. A kept home
    whose index was built with other parameters gets it rebuilt."""
    done = home / "loaded.json"
    store.conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (build_memory,))
    if done.exists():
        info = json.loads(done.read_text())
        if (info["m"], info["ef_construction"]) != (graph.m, graph.ef_construction):
            model_id = store.models.get_collection(NAME).model_id
            store.index.drop_hnsw_index(model_id)
            store.conn.execute("SET max_parallel_maintenance_workers = 1")
            started = time.perf_counter()
            store.index.restore_hnsw_index(model_id, DIM, graph)
            info |= {"m": graph.m, "ef_construction": graph.ef_construction}
            info["load"]["halfvec_build_s"] = time.perf_counter() - started
            size = store.conn.execute("SELECT pg_relation_size(%s)", (hnsw_index_name(model_id),)).fetchone()
            info["load"]["halfvec_index_mb"] = size[0] / 1e6  # type: ignore[index]
            done.write_text(json.dumps(info, default=float))
        return info
    data, image_q, text_q = search_set(n, 0.6, np.random.default_rng(0))
    truth = {"image_truth": np.array(exact_top_k(data, image_q)), "text_truth": np.array(exact_top_k(data, text_q))}
    np.savez(home / "queries.npz", image=image_q, text=text_q, **truth)
    (_, first), loaded = load(store, NAME, data, graph)
    info = {"n": n, "first": first, "load": loaded, "m": graph.m, "ef_construction": graph.ef_construction}
    done.write_text(json.dumps(info, default=float))
    return info


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--home", type=Path, default=None, help="kept between runs (default: a temporary one)")
    parser.add_argument("--build-memory", default="3GB")
    parser.add_argument("--graph", default=f"{DENSE_HNSW.m}x{DENSE_HNSW.ef_construction}", help="m x ef_construction")
    parser.add_argument("--efs", type=int, nargs="+", default=EFS, help="ef_search values of the sweep")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--no-tune", action="store_true", help="load, build and sweep only")
    parser.add_argument("--queries", type=int, default=100, help="tune's queries of each kind")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    keep = args.home is not None  # a home named is kept, its server running, for the next run
    home = args.home or Path(tempfile.mkdtemp(prefix="imagedb-text-recall-"))
    home.mkdir(parents=True, exist_ok=True)
    store = Store(open_connection(None, home))
    info = prepare(store, home, args.n, args.build_memory, HnswParams(*map(int, args.graph.split("x"))))
    print(f"loaded {args.n}: {info['load']}", flush=True)
    saved = np.load(home / "queries.npz")
    queries = {"image": saved["image"], "text": saved["text"]}
    truths = {"image": saved["image_truth"].tolist(), "text": saved["text_truth"].tolist()}
    collection = store.models.get_collection(NAME)
    first = int(info["first"])  # type: ignore[call-overload]
    out_name = f"text_recall_{args.n}{args.tag}.json"
    previous = Path(__file__).parent / "results" / out_name
    result: dict[str, object] = {"n": args.n, "dim": DIM, "m": info["m"], "ef_construction": info["ef_construction"],
                                 "load": info["load"]}  # fmt: skip
    if args.skip_sweep and previous.exists():
        result["sweep"] = json.loads(previous.read_text()).get("sweep")
    else:
        result["sweep"] = sweep(store, collection, first, queries, truths, args.efs)
        write_results(out_name, result)
    if not args.no_tune:
        result["tune"] = tune_run(store, collection, first, queries, truths, args.queries)
        write_results(out_name, result)
    store.close()
    if not keep:
        stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)


def measure(store, collection, first, queries, truth, ef):  # type: ignore[no-untyped-def]
    found, server = _search(store, collection, first, queries, ef)
    return {
        "ef_search": ef,
        "recall@10": recall_at_k(found, truth),
        "server_p50_ms": statistics.median(server),
        "server_p99_ms": float(np.percentile(server, 99)),
    }


def sweep(store, collection, first, queries, truths, efs) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    rows = []
    for ef in efs:
        for kind in ("image", "text"):
            row = {"queries": kind, **measure(store, collection, first, queries[kind], truths[kind], ef)}
            rows.append(row)
            print(f"  {kind:<5} ef {ef:>4}  recall {row['recall@10']:.3f}  p50 {row['server_p50_ms']:.2f} ms"
                  f"  p99 {row['server_p99_ms']:.2f} ms", flush=True)  # fmt: skip
    return rows


def tune_run(store, collection, first, queries, truths, count) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from imagedb.tuning import tune

    started = time.perf_counter()
    tuned = tune(store, collection.name, queries=count)
    took = time.perf_counter() - started
    out: dict[str, object] = {"tune_s": took, "tuned": _plain(tuned)}
    print(f"tune took {took:.0f} s: {out['tuned']}", flush=True)
    for kind, ef in (("image", tuned.ef_search), ("text", tuned.text_ef_search)):
        row = measure(store, collection, first, queries[kind], truths[kind], ef)
        out[f"bench_{kind}_at_tuned"] = row
        print(f"  bench {kind} queries at tuned ef {ef}: recall {row['recall@10']:.3f}"
              f"  p50 {row['server_p50_ms']:.2f} ms  p99 {row['server_p99_ms']:.2f} ms", flush=True)  # fmt: skip
    return out


def _plain(value: object) -> object:
    from dataclasses import asdict, is_dataclass

    return asdict(value) if is_dataclass(value) else value  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
