"""Ingest throughput: model-only encoding vs end-to-end `imagedb ingest` vs the naive one-at-a-time loop.

All three run in this process on the same JPEG files (photographs from scikit-image, resized to camera-like
sizes) with the same model: ViT-B-32 with random weights (speed does not depend on the weights), saved as a
local checkpoint and loaded through imagedb's own path.

- model only: preprocessed tensors ready in memory, encode_images in batches: the ceiling.
- imagedb ingest: files -> decode, EXIF, hashes, thumbnail, embed, store, each batch committed.
- naive loop: the seed document's way: for each file open, preprocess, encode one, INSERT one row, commit.

With --breakdown (bench/gpu_ingest.sh uses it), where the pipeline stalls: each stage alone at full speed,
- decode: decode + EXIF + hashes + thumbnail + preprocess for every file in the ingest's thread pool;
- store: Store.write_batch of ready vectors (batch size as given) into a model that already has its HNSW index;
the slowest of model, decode and store bounds the end-to-end rate.

    python bench/ingest_bench.py [--images 96] [--batch-size 32] [--breakdown]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
import skimage.data
from pgvector import HalfVector
from PIL import Image
from results_dir import RESULTS

from imagedb import db, embed
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.store import Store

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]


def _images(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    sources = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in PHOTOS]
    paths = []
    for i in range(count):
        image = sources[i % len(sources)]
        # Camera-like sizes, each file different content (shifted crop, tint) so nothing is deduplicated.
        size = (int(rng.integers(1600, 2400)), int(rng.integers(1200, 1800)))
        big = image.resize(size).rotate(float(rng.uniform(-3, 3)))
        tint = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 40, 3)))
        path = folder / f"photo_{i:04d}.jpg"
        Image.blend(big, tint, 0.1).save(path, quality=90)
        paths.append(path)
    return paths


def _checkpoint(folder: Path) -> str:
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = folder / "vit-b-32-random.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return f"ViT-B-32:{path}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--breakdown", action="store_true", help="also time decoding and storing alone")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imagedb-ingest-bench-"))
    (work / "photos").mkdir()
    files = _images(work / "photos", args.images)
    spec = ModelSpec.parse(_checkpoint(work))
    embedder = embed.load(spec)
    store = Store(db.open_connection(None, work / "home"))

    # Warm-up: first calls allocate and pick kernels.
    embedder.encode_images([embedder.preprocess(Image.open(files[0]).convert("RGB"))] * 2)

    tensors = [embedder.preprocess(Image.open(f).convert("RGB")) for f in files]
    started = time.perf_counter()
    for i in range(0, len(tensors), args.batch_size):
        embedder.encode_images(tensors[i : i + args.batch_size])
    model_only = len(files) / (time.perf_counter() - started)

    started = time.perf_counter()
    summary = ingest(store, [work / "photos"], model=spec, batch_size=args.batch_size)
    end_to_end = summary.added / (time.perf_counter() - started)
    assert summary.added == len(files), summary

    conn = psycopg.connect(db.resolve_url(None, work / "home"))
    conn.execute("CREATE TABLE naive (path text, embedding halfvec(512))")
    conn.commit()
    from pgvector.psycopg import register_vector

    register_vector(conn)
    started = time.perf_counter()
    for f in files:
        with Image.open(f) as image:
            vector = embedder.encode_images([embedder.preprocess(image.convert("RGB"))])[0]
        conn.execute("INSERT INTO naive VALUES (%s, %s)", (str(f), HalfVector(vector)))
        conn.commit()
    naive = len(files) / (time.perf_counter() - started)
    conn.close()
    stages = _breakdown(store, embedder, files, args.batch_size) if args.breakdown else {}
    store.close()
    db.stop_embedded(work / "home")

    rows = {
        "images": len(files),
        "batch_size": args.batch_size,
        "threads": os.cpu_count(),
        "model_only_images_per_s": model_only,
        "ingest_images_per_s": end_to_end,
        "naive_images_per_s": naive,
        "ingest_vs_model_only": end_to_end / model_only,
        "ingest_vs_naive": end_to_end / naive,
        "device": str(embedder.device),
        **stages,
    }
    print(f"{'model only':>12}  {'imagedb ingest':>14}  {'naive loop':>10}  {'ingest/model':>12}  {'ingest/naive':>12}")
    print(
        f"{model_only:>8.1f} i/s  {end_to_end:>10.1f} i/s  {naive:>6.1f} i/s  {end_to_end / model_only:>12.2f}"
        f"  {end_to_end / naive:>12.2f}"
    )
    for name, rate in stages.items():
        print(f"  {name}: {rate:,.1f}")
    name = "ingest.json" if str(embedder.device) == "cpu" else f"ingest_{embedder.device}.json"
    (RESULTS / name).write_text(json.dumps(rows, indent=1))


def _breakdown(store: Store, embedder: embed.Embedder, files: list[Path], batch_size: int) -> dict[str, float]:
    """Each stage of the pipeline alone: decoding in the ingest's pool, and storing ready vectors."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import datetime, timezone

    from imagedb.images import decode
    from imagedb.store import ImageRecord

    def prepare(path: Path) -> object:
        decoded = decode(path, keep_gps=False, keep_identifying=False, min_side=224)
        return embedder.preprocess(decoded.pixels)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(prepare, files))
    decode_rate = len(files) / (time.perf_counter() - started)
    model_id = store.ensure_model("breakdown", "", 512)
    collection = store.create_collection("breakdown", model_id)
    run_id = store.start_run(collection.id)
    rng = np.random.default_rng(1)
    now = datetime.now(timezone.utc)
    count = max(len(files), 4 * batch_size)
    vectors = rng.standard_normal((count, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    started = time.perf_counter()
    for start in range(0, count, batch_size):
        records = [
            ImageRecord(
                path=f"/b/{i}.jpg",
                sha256=f"{i:064x}",
                size_bytes=1,
                mtime=now,
                width=1,
                height=1,
                format="JPEG",
                taken_at=None,
                camera_make=None,
                camera_model=None,
                orientation=None,
                exif={},
                thumbnail=b"x" * 8000,
                thumbnail_size=(1, 1),
            )  # fmt: skip
            for i in range(start, min(start + batch_size, count))
        ]
        store.write_batch(collection.id, model_id, run_id, records, list(vectors[start : start + batch_size]), [])
    store_rate = count / (time.perf_counter() - started)
    return {
        "decode_pool_images_per_s": decode_rate,
        "decode_threads": float(os.cpu_count() or 1),
        "store_rows_per_s_indexed": store_rate,
    }


if __name__ == "__main__":
    main()
