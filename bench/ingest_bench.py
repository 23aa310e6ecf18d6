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

With --precisions default fp32 (run_all.sh uses it), the whole measurement runs once per IMAGEDB_EMBED_PRECISION,
each in a fresh child process, and ingest.json holds each run under its numeric mode (bf16_autocast, fp32, ...).

    python bench/ingest_bench.py [--images 96] [--batch-size 32] [--breakdown] [--precisions default fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psycopg
from common import image_record, photo_files, random_clip_checkpoint, search_set, write_results
from pgvector import HalfVector
from PIL import Image

from imagedb import embed
from imagedb.embed import ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.database import open_connection, resolve_url
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--unique", type=int, default=None, help="distinct photographs among them (default: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--naive-images", type=int, default=None, help="files the naive loop takes (default: all)")
    parser.add_argument(
        "--incremental", type=int, default=0, help="then this many more files into the indexed collection"
    )
    parser.add_argument("--breakdown", action="store_true", help="also time decoding and storing alone")
    parser.add_argument(
        "--precisions", nargs="+", help="IMAGEDB_EMBED_PRECISION of each run (default: unset), each in a child process"
    )
    parser.add_argument("--rows-to", type=Path, help=argparse.SUPPRESS)  # a child of --precisions: its rows, there
    args = parser.parse_args()
    if args.precisions:
        _by_precision(args.precisions, _without_precisions(sys.argv[1:]))
        return
    work = Path(tempfile.mkdtemp(prefix="imagedb-ingest-bench-"))
    (work / "photos").mkdir()
    started = time.perf_counter()
    files = photo_files(work / "photos", args.images, args.unique)
    print(f"{len(files)} files made in {time.perf_counter() - started:.1f} s", flush=True)
    spec = ModelSpec.parse(random_clip_checkpoint(work))
    embedder = embed.load(spec)
    store = Store(open_connection(None, work / "home"))

    # Warm-up: first calls allocate and pick kernels.
    embedder.encode_images([embedder.preprocess(Image.open(files[0]).convert("RGB"))] * 2)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        tensors = list(pool.map(lambda f: embedder.preprocess(Image.open(f).convert("RGB")), files))
    model_only = _model_only(embedder, tensors, args.batch_size)
    modes = _cuda_modes(embedder, tensors, args.batch_size) if str(embedder.device) == "cuda" else {}
    del tensors

    started = time.perf_counter()
    summary = ingest(store, [work / "photos"], model=spec, batch_size=args.batch_size)
    end_to_end = summary.added / (time.perf_counter() - started)
    assert summary.added == len(files), summary
    print(f"ingest: {summary.added} images, {end_to_end:,.1f} images/s", flush=True)
    incremental = {}
    if args.incremental:  # below the bulk threshold, into the index the first ingest built: HNSW inserts
        (work / "more").mkdir()
        more = work / "more"
        for i, path in enumerate(files[: args.incremental]):
            (more / path.name).write_bytes(path.read_bytes() + b"more" + i.to_bytes(8, "little"))
        started = time.perf_counter()
        summary = ingest(store, [more], model=spec, batch_size=args.batch_size)
        rate = summary.added / (time.perf_counter() - started)
        assert summary.added == args.incremental, summary
        incremental = {"incremental_images": args.incremental, "incremental_images_per_s": rate}
        print(f"incremental ingest into the index: {summary.added} images, {rate:,.1f} images/s", flush=True)

    conn = psycopg.connect(resolve_url(None, work / "home"))
    conn.execute("CREATE TABLE naive (path text, embedding halfvec(512))")
    conn.commit()
    from pgvector.psycopg import register_vector

    register_vector(conn)
    naive_files = files[: args.naive_images or len(files)]
    started = time.perf_counter()
    for f in naive_files:
        with Image.open(f) as image:
            vector = embedder.encode_images([embedder.preprocess(image.convert("RGB"))])[0]
        conn.execute("INSERT INTO naive VALUES (%s, %s)", (str(f), HalfVector(vector)))
        conn.commit()
    naive = len(naive_files) / (time.perf_counter() - started)
    conn.close()
    stages = _breakdown(store, embedder, files, args.batch_size) if args.breakdown else {}
    store.close()
    stop_embedded(work / "home")

    rows = {
        "images": len(files),
        "batch_size": args.batch_size,
        "threads": os.cpu_count(),
        "model_only_images_per_s": model_only,
        "ingest_images_per_s": end_to_end,
        **incremental,
        "naive_images_per_s": naive,
        "naive_images": len(naive_files),
        "ingest_vs_model_only": end_to_end / model_only,
        "ingest_vs_naive": end_to_end / naive,
        "device": str(embedder.device),
        "numeric_mode": embedder.numeric_mode,
        **stages,
        **({"cuda_modes": modes} if modes else {}),
    }
    print(f"{'model only':>12}  {'imagedb ingest':>14}  {'naive loop':>10}  {'ingest/model':>12}  {'ingest/naive':>12}")
    print(
        f"{model_only:>8.1f} i/s  {end_to_end:>10.1f} i/s  {naive:>6.1f} i/s  {end_to_end / model_only:>12.2f}"
        f"  {end_to_end / naive:>12.2f}"
    )
    for name, rate in stages.items():
        print(f"  {name}: {rate:,.1f}")
    for name, mode in modes.items():
        print(f"  model only, {name}: {mode['images_per_s']:,.1f} i/s, min cosine to fp32 {mode['min_cosine']:.6f}")
    if args.rows_to:
        args.rows_to.write_text(json.dumps(rows))
    else:
        write_results("ingest.json" if str(embedder.device) == "cpu" else f"ingest_{embedder.device}.json", rows)


def _without_precisions(argv: list[str]) -> list[str]:
    """The command line less --precisions and its values: what each child runs."""
    out, skipping = [], False
    for arg in argv:
        if arg == "--precisions" or arg.startswith("--precisions="):
            skipping = arg == "--precisions"
        elif skipping and not arg.startswith("-"):
            continue
        else:
            skipping = False
            out.append(arg)
    return out


def _by_precision(precisions: list[str], arguments: list[str]) -> None:
    """Each precision's run in a child of its own (as separate runs of this script), its output on ours, and one
    ingest.json with each run under its numeric mode."""
    runs: dict[str, object] = {}
    device = "cpu"
    with tempfile.TemporaryDirectory() as folder:
        for precision in precisions:
            env = dict(os.environ)
            env.pop(embed.PRECISION_ENV, None)
            if precision != "default":
                env[embed.PRECISION_ENV] = precision
            print(f"== {embed.PRECISION_ENV}={precision if precision != 'default' else '(unset: the default)'} ==",
                  flush=True)  # fmt: skip
            rows_to = Path(folder) / f"{precision}.json"
            subprocess.run([sys.executable, __file__, *arguments, "--rows-to", str(rows_to)], env=env, check=True)
            rows = json.loads(rows_to.read_text())
            key = str(rows["numeric_mode"])
            runs[key if key not in runs else f"{key}, {embed.PRECISION_ENV}={precision}"] = rows
            device = str(rows["device"])
    write_results("ingest.json" if device == "cpu" else f"ingest_{device}.json", runs)


def _model_only(embedder: embed.Embedder, tensors: list[object], batch_size: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(tensors), batch_size):
        embedder.encode_images(tensors[i : i + batch_size])
    return len(tensors) / (time.perf_counter() - started)


def _cuda_modes(embedder: embed.Embedder, tensors: list[object], batch_size: int) -> dict[str, dict[str, float]]:
    """The image tower on a GPU in fp32, TF32 matrix products, and bfloat16 / float16 autocast: images/s and the
    least cosine of each mode's vectors to fp32's (the modes a default could switch to if the gap is tiny)."""
    import torch

    model = embedder._model  # noqa: SLF001 - a benchmark of the tower itself
    batches = [torch.stack(tensors[i : i + batch_size]).cuda() for i in range(0, len(tensors), batch_size)]

    def run(dtype: object, tf32: bool) -> tuple[float, np.ndarray]:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        out = []
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            model.encode_image(batches[0])  # warm-up
            torch.cuda.synchronize()
            started = time.perf_counter()
            for b in batches:
                out.append(model.encode_image(b).float())
            torch.cuda.synchronize()
            rate = len(tensors) / (time.perf_counter() - started)
        vectors = torch.nn.functional.normalize(torch.cat(out), dim=-1).cpu().numpy()
        return rate, vectors

    reference_rate, reference = run(None, False)
    result = {"fp32": {"images_per_s": reference_rate, "min_cosine": 1.0}}
    for name, dtype, tf32 in [("tf32", None, True), ("bf16 autocast", torch.bfloat16, False),
                              ("fp16 autocast", torch.float16, False)]:  # fmt: skip
        rate, vectors = run(dtype, tf32)
        result[name] = {"images_per_s": rate, "min_cosine": float(np.min(np.sum(vectors * reference, axis=1)))}
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return result


_PREPROCESS: object = None  # the embedder's preprocessing, inherited by the forked decode processes


def _prepare(path: Path) -> tuple[int, ...]:
    from imagedb.images import decode

    decoded = decode(path, keep_gps=False, keep_identifying=False, min_side=224)
    tensor = _PREPROCESS(decoded.pixels)  # type: ignore[operator]
    return tuple(tensor.shape)


def _single_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _breakdown(store: Store, embedder: embed.Embedder, files: list[Path], batch_size: int) -> dict[str, float]:
    """Each stage of the pipeline alone: decoding in the ingest's pool, and storing ready vectors."""
    from datetime import datetime, timezone

    from imagedb.batch_writers import BatchWriters
    from imagedb.batch_writers import EmbeddedBatch as _Embedded
    from imagedb.images import decode
    from imagedb.ingest import WRITERS

    def prepare(path: Path) -> object:
        decoded = decode(path, keep_gps=False, keep_identifying=False, min_side=224)
        return embedder.preprocess(decoded.pixels)

    threads = os.cpu_count() or 1
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(prepare, files))
    decode_rate = len(files) / (time.perf_counter() - started)
    gpu_rate = _gpu_decode_rate(embedder, files, batch_size, threads) if str(embedder.device) == "cuda" else None
    one = files[: max(8, len(files) // threads)]
    started = time.perf_counter()
    for path in one:
        prepare(path)
    one_thread = len(one) / (time.perf_counter() - started)
    # The same work in processes (one torch thread each): whether the threads are held back by the GIL.
    global _PREPROCESS
    _PREPROCESS = embedder.preprocess
    import multiprocessing

    with ProcessPoolExecutor(threads, multiprocessing.get_context("fork"), initializer=_single_torch_thread) as pool:
        list(pool.map(_prepare, files[:threads]))  # started and warm
        started = time.perf_counter()
        list(pool.map(_prepare, files, chunksize=4))
        process_rate = len(files) / (time.perf_counter() - started)
    # Clustered unit vectors, like CLIP's (random ones are the worst case of HNSW inserts), into a model whose
    # index exists, one connection after the other and then with ingest's writers.
    count = max(len(files), 4 * batch_size)
    vectors = search_set(count, 0.6, np.random.default_rng(1))[0]
    now = datetime.now(timezone.utc)
    rates = {}
    for writers in (1, WRITERS):
        model_id = store.models.ensure_model(f"breakdown-{writers}", "", 512)
        collection = store.models.create_collection(f"breakdown-{writers}", model_id)
        run_id = store.images.start_run(collection.id)
        started = time.perf_counter()
        with BatchWriters(store, writers) as pool:
            for start in range(0, count, batch_size):
                records = [
                    image_record(f"/b/{i}.jpg", f"{i:064x}", now, thumbnail=b"x" * 8000)
                    for i in range(start, min(start + batch_size, count))
                ]
                batch = _Embedded(records, list(vectors[start : start + batch_size]), {}, [], set(), len(records))
                pool.submit(collection, run_id, batch)
            pool.drain()
        rates[writers] = count / (time.perf_counter() - started)
    return {
        **({"decode_gpu_images_per_s": gpu_rate} if gpu_rate else {}),
        "decode_pool_images_per_s": decode_rate,
        "decode_one_thread_images_per_s": one_thread,
        "decode_processes_images_per_s": process_rate,
        "decode_threads": float(threads),
        "store_rows_per_s_indexed": rates[1],
        "store_writers": float(WRITERS),
        "store_rows_per_s_indexed_writers": rates[WRITERS],
    }


def _gpu_decode_rate(embedder: embed.Embedder, files: list[Path], batch_size: int, threads: int) -> float:
    """Decoding as ingest does it with the embedder on CUDA: headers on the CPU, each batch's JPEGs on the GPU,
    thumbnails and preprocessing on the CPU again, two batches in flight (as ingest's prefetch)."""
    from imagedb import gpu_decode

    def batch(paths: list[Path], pool: ThreadPoolExecutor) -> list[object]:
        return gpu_decode.submit_batch(
            pool, paths, str(embedder.device), keep_gps=False, keep_identifying=False, min_side=224,
            take=lambda p: True, on_cpu=lambda p: None, prepare=lambda p, d: embedder.preprocess(d.pixels),
        )  # fmt: skip

    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        [f.result() for f in batch(batches[0], pool)]  # warm: nvJPEG's handles and buffers
        started = time.perf_counter()
        pending = [batch(b, pool) for b in batches[:2]]
        for b in batches[2:] + [None, None]:  # type: ignore[list-item]
            done = pending.pop(0)
            assert all(f.result() is not None for f in done), "the GPU refused some files"
            if b is not None:
                pending.append(batch(b, pool))
        return len(files) / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
