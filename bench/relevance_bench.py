"""Does one `--min-relevance` cutoff work across queries where one `--min-score` does not? Measured on data with
known ground truth, each cutoff tuned on one query set and judged on another.

1. Planted clusters (synthetic, 512-d): 20,000 background images in 400 unrelated clusters, and 40 planted clusters
   of 5 to 40 images whose tightness differs (noise 0.5 to 1.2 around the centre). All vectors share a common
   direction, as CLIP image embeddings do (two unrelated photos score about 0.5). A query is a planted cluster's
   centre mixed with a query-specific direction (the text-to-image gap: how well the text matches) and a varying
   amount of the common direction, so each query has its own score level for related and for unrelated images.
   Relevant: the cluster's members. Queries on clusters 0-19 tune the cutoffs (best mean F1), clusters 20-39
   judge them.
2. Copies of real photographs (scikit-image's 19 photos, 6 copies each: resized, recompressed, brightened,
   darkened, watermarked, cropped) embedded by a tiny CLIP with RANDOM weights (no real weights offline): a query is
   an original, relevant are its copies. Photos 0-9 tune, 10-18 judge. With random weights this checks the
   mechanics, not CLIP's semantics.

Each query returns its 48 best results (the web page's page), as `imagedb search` ranks them; relevance is computed
exactly as imagedb.relevance computes it, against a random sample of 1000 of the collection's vectors.

    python bench/relevance_bench.py     # prints a Markdown table, writes bench/results/relevance.json
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from common import DIM, SKIMAGE_PHOTOS, copy_transforms, unit, write_results

from imagedb.relevance import SAMPLE_SIZE, Baseline

PAGE = 48


def planted(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray], list[set[int]]]:
    common = unit(rng.standard_normal(DIM))
    background_centres = rng.standard_normal((400, DIM))
    parts = [background_centres[rng.integers(0, 400, 20_000)] + 1.0 * rng.standard_normal((20_000, DIM))]
    planted_centres, members = rng.standard_normal((40, DIM)), []
    start = 20_000
    for c in range(40):
        size, tightness = int(rng.integers(5, 41)), float(rng.uniform(0.5, 1.2))
        parts.append(planted_centres[c] + tightness * rng.standard_normal((size, DIM)))
        members.append(set(range(start, start + size)))
        start += size
    raw = np.concatenate(parts)
    vectors = unit(unit(raw) * 0.7 + common * 0.7)  # the shared direction: unrelated images score about 0.5
    queries = []
    for c in range(40):
        match, level = rng.uniform(0.25, 0.6), rng.uniform(0.3, 1.2)  # how well it matches; its score level
        text = unit(rng.standard_normal(DIM))
        queries.append(unit(match * unit(planted_centres[c]) + level * common + text))
    return vectors, queries, members


def photo_copies() -> tuple[np.ndarray, list[np.ndarray], list[set[int]]]:
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    import skimage.data
    from PIL import Image

    from imagedb import embed
    from imagedb.embed import ModelSpec
    from imagedb.images import decode

    from tiny_model import make_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="relevance-bench-"))
    embedder = embed.load(ModelSpec.parse(make_tiny_model(folder / "model")))
    chosen = ["resize 50%", "JPEG quality 30", "brightness +20%", "brightness -20%", "text watermark", "crop 10%"]
    originals, copies, members = [], [], []
    transforms = copy_transforms()
    for name in SKIMAGE_PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        image.save(folder / f"{name}.png")
        originals.append(embedder.preprocess(decode(folder / f"{name}.png").pixels))
        group = set()
        for transform in chosen:
            fn, quality = transforms[transform]
            path = folder / f"{name}-{transform.replace(' ', '_').replace('%', '')}.jpg"
            fn(image).save(path, quality=quality)
            group.add(len(copies))
            copies.append(embedder.preprocess(decode(path).pixels))
        members.append(group)
    vectors = unit(embedder.encode_images(copies))
    queries = list(unit(embedder.encode_images(originals)))
    return vectors, queries, members


def _pages(
    vectors: np.ndarray, queries: list[np.ndarray], rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each query's page: (scores, relevances) of its 48 best, and which of them are relevant is looked up later."""
    sample = vectors[rng.choice(len(vectors), min(SAMPLE_SIZE, len(vectors)), replace=False)]
    pages = []
    for q in queries:
        scores = vectors @ q
        top = np.argsort(-scores)[:PAGE]
        sampled = sample @ q
        base = Baseline(float(sampled.mean()), float(sampled.std()), len(sampled))
        pages.append((top, scores[top], np.array([base.relevance(float(s)) for s in scores[top]])))
    return pages


def _judge(pages: list, members: list[set[int]], kind: int, cutoff: float) -> dict[str, float]:  # type: ignore[type-arg]
    precision, recall, f1 = [], [], []
    for (top, scores, relevances), relevant in zip(pages, members, strict=True):
        values = scores if kind == 1 else relevances
        kept = {int(i) for i, v in zip(top, values, strict=True) if v >= cutoff}
        hits = len(kept & relevant)
        p = hits / len(kept) if kept else 1.0
        r = hits / min(len(relevant), PAGE)
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return {"precision": float(np.mean(precision)), "recall": float(np.mean(recall)), "f1": float(np.mean(f1))}


def _tuned(pages: list, members: list[set[int]], kind: int) -> float:  # type: ignore[type-arg]
    candidates = np.unique(np.concatenate([p[kind] for p in pages]))
    return float(max(candidates, key=lambda c: _judge(pages, members, kind, c)["f1"]))


def evaluate(name: str, vectors: np.ndarray, queries: list, members: list, split: int) -> list[dict]:  # type: ignore[type-arg]
    pages = _pages(vectors, queries, np.random.default_rng(3))
    tune, judge = (pages[:split], members[:split]), (pages[split:], members[split:])
    rows = []
    for label, kind in (("--min-score", 1), ("--min-relevance", 2)):
        cutoff = _tuned(*tune, kind)
        rows.append({"data": name, "cutoff": label, "value": cutoff, **_judge(*judge, kind, cutoff)})
    # What each query's own best flat score would have been: the spread is why one flat cutoff cannot fit all.
    best = [_tuned([p], [m], 1) for p, m in zip(*judge, strict=True)]
    rows.append({"data": name, "per_query_best_min_score": [round(b, 3) for b in best]})
    return rows


def main() -> None:
    rows = evaluate("planted clusters", *planted(np.random.default_rng(0)), split=20)
    rows += evaluate("copies of real photos (random-weight CLIP)", *photo_copies(), split=10)
    write_results("relevance.json", rows)
    print("| data | cutoff (tuned on the first query set) | value | precision | recall | F1 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "cutoff" in r:
            print(
                f"| {r['data']} | {r['cutoff']} | {r['value']:.3f} | {r['precision']:.2f} | {r['recall']:.2f}"
                f" | {r['f1']:.2f} |"
            )
    for r in rows:
        if "per_query_best_min_score" in r:
            spread = r["per_query_best_min_score"]
            print(
                f"\n{r['data']}: best flat --min-score per judged query ranges {min(spread):.3f} to {max(spread):.3f}"
            )


if __name__ == "__main__":
    main()
