"""Does the page feel instant on 10k images? API latency of the requests the page makes, in this process.

10,000 images (real thumbnails, random 512-d vectors) are written through Store.write_batch into a fresh embedded
database; the model is ViT-B-32 with random weights, loaded through imagedb's checkpoint path, so a text query
pays the real text-encoder cost. Then each request the page makes is timed through the ASGI app, against the
baseline of the bare SQL nearest-neighbour query from Python.

    python bench/api_bench.py [--n 10000]
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import image_record, median_ms, random_clip_checkpoint, write_results
from fastapi.testclient import TestClient
from PIL import Image

from imagedb import embed
from imagedb.api import create_app
from imagedb.embed import ModelSpec
from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store
from imagedb.thumbnails import make_thumbnail


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imagedb-api-bench-"))
    spec = ModelSpec.parse(random_clip_checkpoint(work))
    dim = embed.load(spec).dim
    store = Store(open_connection(None, work / "home"))
    collection = store.models.create_collection("default", store.models.ensure_model(spec.name, spec.pretrained, dim))
    run = store.images.start_run(collection.id)
    rng = np.random.default_rng(0)
    thumb, size = make_thumbnail(Image.fromarray((rng.random((192, 256, 3)) * 255).astype("uint8")))
    now = datetime.now(timezone.utc)
    for start in range(0, args.n, 1000):
        records = [
            image_record(
                f"/bench/{i:06d}.jpg",
                f"{i:064x}",
                now,
                width=256,
                height=192,
                thumbnail=thumb,
                thumbnail_size=size,
                dhash="0" * 64,
            )
            for i in range(start, min(start + 1000, args.n))
        ]
        vectors = rng.standard_normal((len(records), dim)).astype(np.float32)
        store.images.write_batch(collection.id, collection.model_id, run, records, list(vectors), [])
    store.images.finish_run(run, args.n, 0, 0, 0)
    query = rng.standard_normal(dim).astype(np.float32)
    bare = median_ms(lambda: store.search.nearest(collection, query, 48, 100))
    client = TestClient(create_app(None, work / "home"), base_url="http://localhost")  # a loopback Host: no token
    timings = {
        "bare SQL nearest query (48 rows, ef_search 100)": bare,
        "GET /api/search?q=a dog on a beach (text encoder + query)": median_ms(
            lambda: client.get("/api/search", params={"q": "a dog on a beach", "limit": 48}).raise_for_status()
        ),
        "GET /api/images/1/similar": median_ms(
            lambda: client.get("/api/images/1/similar", params={"limit": 48}).raise_for_status()
        ),
        "GET /api/search with a date filter": median_ms(
            lambda: client.get(
                "/api/search", params={"q": "id:1", "limit": 48, "after": "2020-01-01T00:00:00"}
            ).raise_for_status()
        ),
        "GET /api/images/1/thumbnail": median_ms(lambda: client.get("/api/images/1/thumbnail").raise_for_status()),
        "GET /api/images/1": median_ms(lambda: client.get("/api/images/1").raise_for_status()),
    }
    store.close()
    stop_embedded(work / "home")
    print(f"median latency over 30 requests, {args.n:,} images, 2 cores")
    for name, ms in timings.items():
        print(f"  {ms:>8.1f} ms  {name}")
    write_results("api.json", {"n": args.n, "median_ms": timings})


if __name__ == "__main__":
    main()
