"""What the embedded server's shared buffers do to search latency at a million vectors: the same collection and
queries as bench/text_recall_bench.py, searched with initdb's 128 MB and with the size imagedb gives the server
(pg/cluster.py: a quarter of the memory), each after a restart, the smaller first, in one process.

With 128 MB the 1.6 GB index cannot stay in PostgreSQL's buffers, so each search copies its pages from the OS page
cache again. Image queries at ef_search 100, text-like ones at 800 (what `imagedb tune` chose for them there).

    python bench/buffers_bench.py [--n 1000000] [--home DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
from common import write_results
from text_recall_bench import NAME, measure, prepare

from imagedb.pg.cluster import server_defaults
from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store
from imagedb.store.index import DENSE_HNSW

SEARCHES = (("image", 100), ("text", 800))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--home", type=Path, default=None, help="a text_recall_bench home to reuse (kept)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="imagedb-buffers-"))
    store = Store(open_connection(None, home))
    info = prepare(store, home, args.n, "3GB", DENSE_HNSW)
    store.close()
    saved = np.load(home / "queries.npz")
    rows = []
    for buffers in ("128MB", server_defaults()["shared_buffers"]):
        stop_embedded(home)
        store = Store(open_connection(None, home))  # restarted: the buffers are empty again
        store.conn.execute(f"ALTER SYSTEM SET shared_buffers = '{buffers}'")  # ours: digits and MB
        store.close()
        stop_embedded(home)
        store = Store(open_connection(None, home))
        shown = store.conn.execute("SHOW shared_buffers").fetchone()[0]  # type: ignore[index]
        collection = store.models.get_collection(NAME)
        for kind, ef in SEARCHES:
            runs = [
                measure(store, collection, int(info["first"]), saved[kind], saved[f"{kind}_truth"].tolist(), ef)
                for _ in range(args.rounds)
            ]
            row = {
                "shared_buffers": shown,
                "queries": kind,
                "ef_search": ef,
                "recall@10": runs[0]["recall@10"],
                "server_p50_ms": statistics.median(r["server_p50_ms"] for r in runs),
                "server_p99_ms": statistics.median(r["server_p99_ms"] for r in runs),
                "first_round_p50_ms": runs[0]["server_p50_ms"],
            }
            rows.append(row)
            print(f"  shared_buffers {shown:>7}  {kind:<5} ef {ef:>4}  recall {row['recall@10']:.3f}"
                  f"  p50 {row['server_p50_ms']:.2f} ms  p99 {row['server_p99_ms']:.2f} ms"
                  f"  (first round p50 {row['first_round_p50_ms']:.2f} ms)", flush=True)  # fmt: skip
        store.conn.execute("ALTER SYSTEM RESET shared_buffers")  # back to imagedb's default at the next start
        store.close()
    write_results(f"buffers_{args.n}.json", {"n": args.n, "rounds": args.rounds, "rows": rows})
    stop_embedded(home)
    if args.home is None:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
