"""Does the page feel instant on 10k images? API latency of the requests the page makes, in this process.

10,000 images (real thumbnails, random 512-d vectors) are written through Store.write_batch into a fresh embedded
database; the model is ViT-B-32 with random weights, loaded through imagedb's checkpoint path, so a text query
pays the real text-encoder cost. Then each request the page makes is timed through the ASGI app, against the
baseline of the bare SQL nearest-neighbour query from Python.

    python bench/api_bench.py [--n 10000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from ingest_bench import _checkpoint
from PIL import Image
from results_dir import RESULTS

from imagedb import embed
from imagedb.api import create_app
from imagedb.embed import ModelSpec
from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.store import ImageRecord, Store
from imagedb.thumbnails import make_thumbnail


def _ms(fn, repeat: int = 30) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imagedb-api-bench-"))
    spec = ModelSpec.parse(_checkpoint(work))
    dim = embed.load(spec).dim
    store = Store(open_connection(None, work / "home"))
    collection = store.models.create_collection("default", store.models.ensure_model(spec.name, spec.pretrained, dim))
    run = store.images.start_run(collection.id)
    rng = np.random.default_rng(0)
    thumb, size = make_thumbnail(Image.fromarray((rng.random((192, 256, 3)) * 255).astype("uint8")))
    now = datetime.now(timezone.utc)
    for start in range(0, args.n, 1000):
        records = [
            ImageRecord(
                f"/bench/{i:06d}.jpg",
                f"{i:064x}",
                1,
                now,
                256,
                192,
                "JPEG",
                None,
                None,
                None,
                None,
                {},
                thumb,
                size,
                "0" * 64,
            )
            for i in range(start, min(start + 1000, args.n))
        ]
        vectors = rng.standard_normal((len(records), dim)).astype(np.float32)
        store.images.write_batch(collection.id, collection.model_id, run, records, list(vectors), [])
    store.images.finish_run(run, args.n, 0, 0, 0)
    query = rng.standard_normal(dim).astype(np.float32)
    bare = _ms(lambda: store.search.nearest(collection, query, 48, 100))
    client = TestClient(create_app(None, work / "home"), base_url="http://localhost")  # a loopback Host: no token
    timings = {
        "bare SQL nearest query (48 rows, ef_search 100)": bare,
        "GET /api/search?q=a dog on a beach (text encoder + query)": _ms(
            lambda: client.get("/api/search", params={"q": "a dog on a beach", "limit": 48}).raise_for_status()
        ),
        "GET /api/images/1/similar": _ms(
            lambda: client.get("/api/images/1/similar", params={"limit": 48}).raise_for_status()
        ),
        "GET /api/search with a date filter": _ms(
            lambda: client.get(
                "/api/search", params={"q": "id:1", "limit": 48, "after": "2020-01-01T00:00:00"}
            ).raise_for_status()
        ),
        "GET /api/images/1/thumbnail": _ms(lambda: client.get("/api/images/1/thumbnail").raise_for_status()),
        "GET /api/images/1": _ms(lambda: client.get("/api/images/1").raise_for_status()),
    }
    store.close()
    stop_embedded(work / "home")
    print(f"median latency over 30 requests, {args.n:,} images, 2 cores")
    for name, ms in timings.items():
        print(f"  {ms:>8.1f} ms  {name}")
    (RESULTS / "api.json").write_text(json.dumps({"n": args.n, "median_ms": timings}))


if __name__ == "__main__":
    main()
