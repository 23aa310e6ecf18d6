"""The int8 embedding mode (IMAGEDB_EMBED_PRECISION=int8) against fp32, all in this process on the same files:

- images/s of the naive loop (open, preprocess, encode one, INSERT one row, commit, as in ingest_bench.py, in
  imagedb's default mode: bfloat16 autocast on CPUs with native bfloat16, else fp32), of `imagedb ingest` in the
  default mode, in fp32 and in int8, and of the model alone in each mode;
- ingest and the naive loop are timed round by round (--rounds slices of the files, every way on each slice, the
  order turning), so that a shared machine's changing load weighs on each alike;
- the cosine of each image's int8 vector to its fp32 vector (min, mean);
- recall@10 of the int8 results against the fp32 results on the same images: image queries (each image's own
  vector, itself excluded) and text queries (texts stay fp32 in both modes; the image vectors differ).

The model is ViT-B-32 with random weights unless --model names a checkpoint (speed does not depend on the
weights; cosine and recall do: random weights give vectors that are all alike, so rankings hang on small
differences, which is harder on recall than trained weights). The three modes' models are the same weights under
three paths, so each mode has its own column and the mixing check does not refuse the later ingests.

    python bench/quantized_bench.py [--images 96] [--batch-size 32] [--naive-images N] [--rounds 3]
                                    [--model NAME:/path/to/checkpoint]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psycopg
from common import photo_files, random_clip_checkpoint, write_results
from pgvector import HalfVector
from PIL import Image

from imagedb import embed, int8
from imagedb.embed import PRECISION_ENV, Embedder, ModelSpec
from imagedb.ingest import ingest
from imagedb.pg.database import open_connection, resolve_url
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store

K = 10
TEXTS = [f"a photo of {what}" for what in (
    "an astronaut", "a cup of coffee", "a cat", "a rocket", "stars and galaxies", "cells under a microscope",
    "an eye", "a dog", "a beach", "a city at night", "a bowl of fruit", "a mountain", "a red car", "a forest",
    "a person smiling", "a microscope slide", "a space shuttle", "a tabby cat", "a latte", "the night sky",
)]  # fmt: skip


def _embedder(spec: ModelSpec, precision: str) -> Embedder:
    if precision:
        os.environ[PRECISION_ENV] = precision
    try:
        return Embedder(spec)
    finally:
        os.environ.pop(PRECISION_ENV, None)


def _twin(spec: ModelSpec, work: Path, name: str) -> ModelSpec:
    """The same weights under another path: a model of its own, so each mode fills its own column."""
    assert spec.checkpoint is not None, "--model must name a local checkpoint"
    folder = work / name
    folder.mkdir()
    shutil.copy(spec.checkpoint, folder / spec.checkpoint.name)
    config = spec.checkpoint.with_name(f"{spec.name}.json")
    if config.is_file():
        shutil.copy(config, folder / config.name)
    return ModelSpec.parse(f"{spec.name}:{folder / spec.checkpoint.name}")


def _encode(embedder: Embedder, tensors: list[object], batch_size: int) -> tuple[np.ndarray, float]:
    started, out = time.perf_counter(), []
    for i in range(0, len(tensors), batch_size):
        out.append(embedder.encode_images(tensors[i : i + batch_size]))
    return np.concatenate(out), len(tensors) / (time.perf_counter() - started)


def _top(matrix: np.ndarray, queries: np.ndarray, exclude_self: bool) -> np.ndarray:
    # Ranked at the precision the database holds (halfvec), as a search would.
    m = matrix.astype(np.float16).astype(np.float32)
    scores = queries.astype(np.float16).astype(np.float32) @ m.T
    if exclude_self:
        np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")[:, :K]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def _ingest(store: Store, folder: Path, spec: ModelSpec, embedder: Embedder, name: str, batch_size: int) -> float:
    """Seconds to ingest `folder` into collection `name`."""
    embed._loaded[spec] = embedder  # noqa: SLF001 - this process holds both modes; ingest loads through it
    started = time.perf_counter()
    summary = ingest(store, [folder], collection=name, model=spec, batch_size=batch_size)
    seconds = time.perf_counter() - started
    assert summary.failed == 0 and summary.added == len(list(folder.iterdir())), summary
    return seconds


NAIVE_PARTS = {"open and preprocess": 0.0, "encode one": 0.0, "INSERT and commit": 0.0}  # seconds, summed


def _naive(url: str, embedder: Embedder, files: list[Path]) -> float:
    """Seconds for the naive loop over `files` (its parts summed into NAIVE_PARTS)."""
    from pgvector.psycopg import register_vector

    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS naive (path text, embedding halfvec(512))")
        conn.commit()
        register_vector(conn)
        started = time.perf_counter()
        for f in files:
            t0 = time.perf_counter()
            with Image.open(f) as image:
                tensor = embedder.preprocess(image.convert("RGB"))
            t1 = time.perf_counter()
            vector = embedder.encode_images([tensor])[0]
            t2 = time.perf_counter()
            conn.execute("INSERT INTO naive VALUES (%s, %s)", (str(f), HalfVector(vector)))
            conn.commit()
            t3 = time.perf_counter()
            for part, spent in zip(NAIVE_PARTS, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                NAIVE_PARTS[part] += spent
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--naive-images", type=int, help="files the naive loop takes (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="slices of the files, every way timed on each")
    parser.add_argument("--quality-only", action="store_true", help="only the cosine and recall, no ingest")
    parser.add_argument("--model", help="NAME:/path/to/checkpoint (default: ViT-B-32, random weights)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imagedb-quantized-bench-"))
    (work / "photos").mkdir()
    files = photo_files(work / "photos", args.images)
    base = ModelSpec.parse(args.model or random_clip_checkpoint(work))
    assert base.checkpoint is not None, "--model must name a local checkpoint"
    spec_default, spec_int8 = _twin(base, work, "default"), _twin(base, work, "int8")
    fp32, quantised, default = _embedder(base, "fp32"), _embedder(spec_int8, "int8"), _embedder(spec_default, "")
    assert quantised.numeric_mode == int8.INT8, quantised.numeric_mode
    warm = [fp32.preprocess(Image.open(files[0]).convert("RGB"))] * 2
    fp32.encode_images(warm), quantised.encode_images(warm), default.encode_images(warm)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        tensors = list(pool.map(lambda f: fp32.preprocess(Image.open(f).convert("RGB")), files))
    a, model_fp32 = _encode(fp32, tensors, args.batch_size)
    b, model_int8 = _encode(quantised, tensors, args.batch_size)
    c, model_default = _encode(default, tensors, args.batch_size)
    del tensors
    cosines = np.sum(a * b, axis=1)
    texts = fp32.encode_texts(TEXTS)
    # How far apart the fp32 results are, against how far int8 moves them: with random weights every image's
    # vector is nearly the same, and a text query's 10th and 11th scores differ by less than int8's change.
    pairwise = (a @ a.T)[~np.eye(len(a), dtype=bool)]
    text_scores = np.sort(texts @ a.T, axis=1)[:, ::-1]
    gap = float(np.median(text_scores[:, K - 1] - text_scores[:, K]))
    moved = float(np.median(np.abs(texts @ b.T - texts @ a.T)))
    recall_images = _recall(_top(b, b, True), _top(a, a, True))
    recall_texts = _recall(_top(b, texts, False), _top(a, texts, False))
    # The same measure for imagedb's default mode, whose vectors already mix with fp32's: the yardstick.
    default_images = _recall(_top(c, c, True), _top(a, a, True))
    default_texts = _recall(_top(c, texts, False), _top(a, texts, False))
    print(f"model alone: fp32 {model_fp32:.1f} images/s, int8 {model_int8:.1f} ({model_int8 / model_fp32:.2f}x),"
          f" default ({default.numeric_mode}) {model_default:.1f}")  # fmt: skip
    print(f"cosine int8 to fp32: min {cosines.min():.5f}, mean {cosines.mean():.5f}")
    print(f"fp32 vectors: mean pairwise cosine {pairwise.mean():.4f}; text queries: median gap between the"
          f" {K}th and {K + 1}th score {gap:.6f}, median change of a score in int8 {moved:.6f}")  # fmt: skip
    print(f"recall@{K} against fp32: image queries {recall_images:.4f}, text queries {recall_texts:.4f}", flush=True)
    print(f"  the same for {default.numeric_mode} (imagedb's default here;"
          f" min cosine {np.sum(a * c, axis=1).min():.5f}): image queries {default_images:.4f},"
          f" text queries {default_texts:.4f}", flush=True)  # fmt: skip
    if args.quality_only:
        shutil.rmtree(work, ignore_errors=True)
        return

    store = Store(open_connection(None, work / "home"))
    # Round by round, each round a new slice of the files for every way in turn (the order turning each round), so
    # that a shared machine's changing load weighs on each way alike; rates are files over summed seconds.
    ways = {
        "naive": lambda folder, naive_files: _naive(resolve_url(None, work / "home"), default, naive_files),
        "default": lambda folder, _: _ingest(store, folder, spec_default, default, "default", args.batch_size),
        "fp32": lambda folder, _: _ingest(store, folder, base, fp32, "fp32", args.batch_size),
        "int8": lambda folder, _: _ingest(store, folder, spec_int8, quantised, "int8", args.batch_size),
    }
    seconds = dict.fromkeys(ways, 0.0)
    per_round = -(-len(files) // args.rounds)
    naive_total = min(args.naive_images or len(files), len(files))
    naive_per_round = -(-naive_total // args.rounds)
    naive_count = 0
    for round_ in range(args.rounds):
        folder = work / f"round-{round_}"
        folder.mkdir()
        chunk = files[round_ * per_round : (round_ + 1) * per_round]
        for f in chunk:
            f.rename(folder / f.name)
        naive_files = sorted(folder.iterdir())[:naive_per_round]
        naive_count += len(naive_files)
        names = list(ways)
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            seconds[name] += ways[name](folder, naive_files)
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {s:.1f} s" for n, s in seconds.items()), flush=True)
    naive = naive_count / seconds["naive"]
    ingest_default, ingest_fp32, ingest_int8 = (len(files) / seconds[n] for n in ("default", "fp32", "int8"))
    print(f"naive loop ({default.numeric_mode}, imagedb's default here): {naive:.2f} images/s; per image: "
          + ", ".join(f"{part} {t / naive_count * 1000:.0f} ms" for part, t in NAIVE_PARTS.items()))  # fmt: skip
    print(f"imagedb ingest: {default.numeric_mode} {ingest_default:.2f}, fp32 {ingest_fp32:.2f},"
          f" int8 {ingest_int8:.2f} images/s")  # fmt: skip
    store.close()
    stop_embedded(work / "home")
    shutil.rmtree(work, ignore_errors=True)

    rows = {
        "images": len(files),
        "batch_size": args.batch_size,
        "threads": os.cpu_count(),
        "weights": "random (ViT-B-32, seed 0)" if not args.model else str(base),
        "default_mode": default.numeric_mode,
        "naive_images": naive_count,
        "rounds": args.rounds,
        "naive_images_per_s": naive,
        "naive_ms_per_image": {part: spent / naive_count * 1000 for part, spent in NAIVE_PARTS.items()},
        "ingest_default_images_per_s": ingest_default,
        "ingest_default_vs_naive": ingest_default / naive,
        "ingest_int8_vs_default": ingest_int8 / ingest_default,
        "model_default_images_per_s": model_default,
        "cosine_min_default_mode": float(np.sum(a * c, axis=1).min()),
        "recall_at_10_image_queries_default_mode": default_images,
        "recall_at_10_text_queries_default_mode": default_texts,
        "ingest_fp32_images_per_s": ingest_fp32,
        "ingest_int8_images_per_s": ingest_int8,
        "ingest_int8_vs_naive": ingest_int8 / naive,
        "ingest_fp32_vs_naive": ingest_fp32 / naive,
        "ingest_int8_vs_fp32": ingest_int8 / ingest_fp32,
        "model_fp32_images_per_s": model_fp32,
        "model_int8_images_per_s": model_int8,
        "model_int8_vs_fp32": model_int8 / model_fp32,
        "cosine_min": float(cosines.min()),
        "cosine_mean": float(cosines.mean()),
        "recall_at_10_image_queries": recall_images,
        "recall_at_10_text_queries": recall_texts,
        "text_queries": len(TEXTS),
        "fp32_mean_pairwise_cosine": float(pairwise.mean()),
        "text_score_gap_10th_11th_median": gap,
        "text_score_change_int8_median": moved,
    }
    print(f"{'naive':>8} {'ingest default':>14} {'ingest fp32':>12} {'ingest int8':>12} {'int8/naive':>10}"
          f" {'int8/default':>12} {'int8/fp32':>10}")  # fmt: skip
    print(f"{naive:>8.2f} {ingest_default:>14.2f} {ingest_fp32:>12.2f} {ingest_int8:>12.2f}"
          f" {ingest_int8 / naive:>10.2f} {ingest_int8 / ingest_default:>12.2f}"
          f" {ingest_int8 / ingest_fp32:>10.2f}")  # fmt: skip
    print(write_results("quantized.json", rows))


if __name__ == "__main__":
    main()
