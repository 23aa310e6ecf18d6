"""The text-query cache: wall time of `imagedb search "TEXT"` from the shell, the first time a text is asked
(the process imports torch, loads the model and embeds the text) against a repeat of the same text (its vector
comes from the text_embeddings table: no torch, no model). ViT-B-32 with random weights from a local checkpoint
(the real architecture and text encoder; real weights cost the same), a handful of images, the embedded server
already running. Each first query uses a new text, so none of them is cached.

    python bench/text_cache_bench.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from common import photo_files, random_clip_checkpoint, timed_process, write_results

from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    seconds, done = timed_process(command, env, text=True)
    return seconds, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imagedb-text-cache-bench-"))
    (work / "photos").mkdir()
    photo_files(work / "photos", 8)
    spec = ModelSpec.parse(random_clip_checkpoint(work))
    home = work / "home"
    store = Store(open_connection(None, home))
    ingest(store, [work / "photos"], model=spec)
    store.close()

    executable = str(Path(sys.executable).with_name("imagedb"))
    env = {**os.environ, "IMAGEDB_HOME": str(home)}
    env.pop("IMAGEDB_DATABASE_URL", None)
    first, repeated = [], []
    for run in range(args.runs):
        text = f"a dog on a beach, take {run}"
        seconds, stderr = _timed([executable, "search", text], env)
        assert "loading" in stderr, stderr  # a new text: the model loads
        first.append(seconds)
        seconds, stderr = _timed([executable, "search", text], env)
        assert "loading" not in stderr, stderr  # cached: no model
        repeated.append(seconds)
    stop_embedded(home)

    result = {
        "model": "ViT-B-32 (random weights, local checkpoint)",
        "runs": args.runs,
        "first_query_median_s": statistics.median(first),
        "repeated_query_median_s": statistics.median(repeated),
        "first_query_runs_s": first,
        "repeated_query_runs_s": repeated,
    }
    print(f"`imagedb search TEXT` from the shell, ViT-B-32, {os.cpu_count()} cores, median of {args.runs}:")
    print(f"  {result['first_query_median_s']:>6.2f} s  first time a text is asked (imports torch, loads the model)")
    print(f"  {result['repeated_query_median_s']:>6.2f} s  the same text again (its vector from text_embeddings)")
    write_results("text_cache.json", result)


if __name__ == "__main__":
    main()
