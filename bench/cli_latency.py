"""When is `imagedb serve` worth running? A text search from the shell against the same search in a warm process.

Each `imagedb search "..."` is a new process: it imports torch, loads the model and connects before the query
runs, unless the text was embedded before (the text-query cache: then no model at all). A server (or any program
using the library) pays the model once. All three are timed here on the same database:
ViT-B-32 with random weights (the real architecture and text encoder; real weights cost the same), a handful of
images, the embedded server already running.

    python bench/cli_latency.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import photo_files, random_clip_checkpoint, timed_process, write_results

from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.query import parse
from imagedb.request import SearchRequest
from imagedb.search import search
from imagedb.store import Store

QUERY = "a dog on a beach"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imagedb-cli-bench-"))
    (work / "photos").mkdir()
    photo_files(work / "photos", 8)
    spec = ModelSpec.parse(random_clip_checkpoint(work))
    home = work / "home"
    store = Store(open_connection(None, home))
    ingest(store, [work / "photos"], model=spec)

    executable = Path(sys.executable).with_name("imagedb")
    env = {**os.environ, "IMAGEDB_HOME": str(home)}
    env.pop("IMAGEDB_DATABASE_URL", None)

    def timed(text: str) -> float:
        return timed_process([str(executable), "search", text], env)[0]

    shell = [timed(f"{QUERY} {n}") for n in range(args.runs)]  # a new text each time: the model loads
    cached = [timed(f"{QUERY} 0") for _ in range(args.runs)]  # embedded before: read from the cache

    # Warm: the model is loaded once in this process, as in `imagedb serve`.
    search(store, SearchRequest(parse([QUERY])))
    warm, warm_cached = [], []
    for n in range(max(args.runs, 20)):
        started = time.perf_counter()
        search(store, SearchRequest(parse([f"{QUERY} warm {n}"])))  # a new text: the text encoder runs
        warm.append(time.perf_counter() - started)
        started = time.perf_counter()
        search(store, SearchRequest(parse([QUERY])))  # a text searched before: the cache answers
        warm_cached.append(time.perf_counter() - started)
    store.close()
    stop_embedded(home)

    result = {
        "query": QUERY,
        "model": "ViT-B-32 (random weights)",
        "cli_process_median_s": statistics.median(shell),
        "cli_process_runs_s": shell,
        "cli_cached_text_median_s": statistics.median(cached),
        "warm_process_median_ms": 1000 * statistics.median(warm),
        "warm_process_cached_text_median_ms": 1000 * statistics.median(warm_cached),
    }
    print(f"text search {QUERY!r}, ViT-B-32, 2 cores, median:")
    print(f"  {result['cli_process_median_s']:>8.2f} s   `imagedb search` from the shell, a new text (model loaded)")
    print(f"  {result['cli_cached_text_median_s']:>8.2f} s   the same, a text searched before (no model)")
    print(f"  {result['warm_process_median_ms']:>8.1f} ms  a new text in a warm process (as `imagedb serve`)")
    print(f"  {result['warm_process_cached_text_median_ms']:>8.1f} ms  a text searched before, in a warm process")
    write_results("cli_latency.json", result)


if __name__ == "__main__":
    main()
