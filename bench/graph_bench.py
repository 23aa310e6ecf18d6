"""What a denser HNSW graph buys at a million vectors: recall@10 and server p50/p99 against ef_search for the
halfvec index built with m 16 / ef_construction 64 (imagedb's default) and denser settings, with
maintenance_work_mem large enough for the whole graph (a build whose graph outgrows it goes on far slower).

The clustered set of bench/scale_bench.py, loaded once through imagedb's bulk path; each index is built on it in
turn (max_parallel_maintenance_workers 1: the leader and one worker, the two cores of this box).

    python bench/graph_bench.py [--n 1000000] [--graphs 16x64 24x128] [--build-memory 4GB] [--filtered] [--tag T]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DIM, RESULTS, exact_top_k, search_set, write_results
from scale_bench import EFS, filtered, load, sweep

from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store
from imagedb.store.index import HnswParams, hnsw_index_name


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--graphs", nargs="+", default=["16x64", "24x128"], help="m x ef_construction")
    parser.add_argument("--build-memory", default="4GB", help="maintenance_work_mem for the builds")
    parser.add_argument("--filtered", action="store_true", help="also filtered searches (1%% and 10%% kept)")
    parser.add_argument("--tag", default="", help="suffix of the results' file names")
    args = parser.parse_args()
    graphs = [HnswParams(*map(int, g.split("x"))) for g in args.graphs]
    home = Path(tempfile.mkdtemp(prefix="imagedb-graph-bench-"))
    store = Store(open_connection(None, home))
    data, image_q, text_q = search_set(args.n, 0.6, np.random.default_rng(0))
    truths = {"image": exact_top_k(data, image_q), "text": exact_top_k(data, text_q)}
    store.conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (args.build_memory,))
    (collection, first), loaded = load(store, "graphs", data, graphs[0])
    result: dict[str, object] = {"n": args.n, "dim": DIM, "build_memory": args.build_memory, "load": loaded}
    runs = []
    model_id = collection.model_id  # type: ignore[attr-defined]
    for i, params in enumerate(graphs):
        if i:
            store.index.drop_hnsw_index(model_id)
            store.conn.execute("SET max_parallel_maintenance_workers = 1")
            started = time.perf_counter()
            store.index.restore_hnsw_index(model_id, DIM, params)
            build = time.perf_counter() - started
        else:
            build = loaded["halfvec_build_s"]
        size = store.conn.execute("SELECT pg_relation_size(%s) / 1e6", (hnsw_index_name(model_id),)).fetchone()[0]  # type: ignore[index]
        label = f"m {params.m}, ef_construction {params.ef_construction}"
        print(f"== {label}: built in {build:.0f} s, {size:.0f} MB ==", flush=True)
        rows = sweep(store, collection, first, label, image_q, text_q, truths, EFS)
        runs.append({"m": params.m, "ef_construction": params.ef_construction, "build_s": build, "index_mb": size,
                     "sweep": rows})  # fmt: skip
        if args.filtered:
            runs[-1]["filtered"] = filtered(store, collection, first, data, image_q)
        result["runs"] = runs
        write_results(f"graph_{args.n}{args.tag}.json", result)
    store.close()
    stop_embedded(home)
    plot(result, RESULTS / f"graph_{args.n}{args.tag}.png")


def plot(result: dict[str, object], path: Path) -> None:
    """Recall@10 against server p50 for each graph, image and text-like queries, ef_search at the points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for run, marker in zip(result["runs"], "os^D", strict=False):  # type: ignore[call-overload]
        for kind, line in (("image", "-"), ("text", "--")):
            rows = [r for r in run["sweep"] if r["queries"] == kind]
            label = f"m {run['m']}, ef_construction {run['ef_construction']}, {kind} queries"
            ax.plot([r["recall@10"] for r in rows], [r["server_p50_ms"] for r in rows], marker + line, label=label)
            for r in rows:
                ax.annotate(str(r["ef_search"]), (r["recall@10"], r["server_p50_ms"]), fontsize=7)
    ax.axvline(0.95, color="grey", linewidth=0.5)
    ax.axhline(5.0, color="grey", linewidth=0.5)
    ax.set_xlabel("recall@10")
    ax.set_ylabel("server p50, ms")
    ax.set_title(f"{result['n']:,} x {DIM} clustered vectors, halfvec HNSW, 2 cores", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
