"""How long `imagedb dupes` takes on N images, against an exact all-pairs scan in numpy as the baseline.

Synthetic rows go through imagedb's own Store.write_batch, as a bulk ingest writes them (embedding index built
after the load), into a fresh embedded database: random 64-bit hashes
and 512-d unit vectors, with 5% of the images given near-duplicate copies (a few hash bits flipped, a little noise
on the vector). Then find_duplicates runs with method hash and clip. The baseline computes the same hash pairs
exactly with numpy over all pairs, on a subsample, scaled by n^2 to N.

    python bench/dupes_scale.py --n 100000      # prints a table, writes bench/results/dupes_scale.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import DIM, image_record, write_results

from imagedb.dupes import find_duplicates
from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store


def _data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    bits = rng.integers(0, 2, size=(n, 64), dtype=np.uint8)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    originals = rng.choice(n, size=n // 20, replace=False)
    copies = rng.choice(np.setdiff1d(np.arange(n), originals), size=len(originals), replace=False)
    bits[copies] = bits[originals]
    flips = rng.integers(0, 64, size=(len(copies), 3))
    for row, cols in zip(copies, flips, strict=True):
        bits[row, cols] ^= 1
    vectors[copies] = vectors[originals] + 0.05 * rng.standard_normal((len(copies), DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return bits, vectors


def _load(store: Store, bits: np.ndarray, vectors: np.ndarray) -> None:
    model_id = store.models.ensure_model("bench-512", "", DIM)
    collection = store.models.create_collection("default", model_id)
    run = store.images.start_run(collection.id)
    index = store.index.drop_hnsw_index(model_id)  # what ingest does for a bulk load: build the index afterwards
    now = datetime.now(timezone.utc)
    for start in range(0, len(bits), 2000):
        stop = min(start + 2000, len(bits))
        records = [
            image_record(f"/bench/{i:07d}.jpg", f"{i:064x}", now, dhash="".join(map(str, bits[i])))
            for i in range(start, stop)
        ]
        store.images.write_batch(collection.id, model_id, run, records, list(vectors[start:stop]), [])
    store.index.restore_hnsw_index(model_id, DIM, index)
    store.images.finish_run(run, len(bits), 0, 0, 0)  # as ingest does: this also refreshes the planner's statistics


def _numpy_pairs(bits: np.ndarray, max_distance: int) -> tuple[int, float]:
    packed = np.packbits(bits, axis=1).view(np.uint64).ravel()
    started = time.perf_counter()
    pairs = 0
    for start in range(0, len(packed), 1000):
        xor = packed[start : start + 1000, None] ^ packed[None, :]
        distance = np.bitwise_count(xor)
        pairs += int((distance <= max_distance).sum()) - min(1000, len(packed) - start)
    return pairs // 2, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--baseline-n", type=int, default=20_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    bits, vectors = _data(args.n, rng)
    home = Path(tempfile.mkdtemp(prefix="imagedb-bench-"))
    store = Store(open_connection(None, home))
    started = time.perf_counter()
    _load(store, bits, vectors)
    load_s = time.perf_counter() - started
    rows = {"n": args.n, "load_s": load_s}
    for method in ("hash", "clip"):
        started = time.perf_counter()
        groups = find_duplicates(store, method=method)  # type: ignore[arg-type]
        rows[f"{method}_s"] = time.perf_counter() - started
        rows[f"{method}_groups"] = len(groups)
    pairs, baseline_s = _numpy_pairs(bits[: args.baseline_n], 10)
    rows["numpy_all_pairs_s_at_baseline_n"] = baseline_s
    rows["baseline_n"] = args.baseline_n
    rows["numpy_all_pairs_s_scaled_to_n"] = baseline_s * (args.n / args.baseline_n) ** 2
    store.close()
    stop_embedded(home)
    print(f"{'images':>8}  {'load (ingest path)':>18}  {'dupes hash':>10}  {'dupes clip':>10}  {'numpy all pairs':>16}")
    print(
        f"{args.n:>8}  {load_s:>17.1f}s  {rows['hash_s']:>9.1f}s  {rows['clip_s']:>9.1f}s"
        f"  {rows['numpy_all_pairs_s_scaled_to_n']:>15.1f}s (measured {baseline_s:.1f}s on {args.baseline_n},"
        " scaled by n^2)"
    )
    print(f"groups found: hash {rows['hash_groups']}, clip {rows['clip_groups']} (planted: {args.n // 20})")
    write_results("dupes_scale.json", rows)


if __name__ == "__main__":
    main()
