"""Near-duplicate quality of the perceptual hash (dHash), per transform and threshold, on real photographs.

Copies of scikit-image's photographs are made with each transform, written to files, and read back through
imagedb's own decode path (images.decode -> thumbnail -> dhash), the code ingest runs. A positive pair is a photo
and its copy; a negative pair is a photo and a copy of another photo. Recall: positives within the threshold.
Precision: positives within the threshold over all pairs within it. The watch list row hashes the original in all
eight orientations and takes the nearest, as `imagedb watch` does.

    python bench/dupes_quality.py            # prints a Markdown table, writes bench/results/dupes_quality.json
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import skimage.data
from common import SKIMAGE_PHOTOS, copy_transforms, write_results
from PIL import Image

from imagedb.dupes import watch_hashes
from imagedb.images import decode

PHOTOS = SKIMAGE_PHOTOS
TRANSFORMS = copy_transforms()
THRESHOLDS = [4, 6, 8, 10, 12, 14, 16]
# The copies the default must catch: recall >= 0.95 at precision >= 0.99.
REQUIRED = ["resize 50%", "resize 25%", "JPEG quality 30", "brightness +20%", "brightness -20%", "text watermark"]


# Bursts are not copies: two frames of one scene, the camera moved between them. Each photo gives two crops of
# 80% of its width and height, the second shifted by this share of the width (and half of it down).
BURST_SHIFTS = [0.02, 0.05, 0.10, 0.20]


def _burst_pair(image: Image.Image, shift: float) -> tuple[Image.Image, Image.Image]:
    w, h = image.size
    cw, ch = int(w * 0.8), int(h * 0.8)
    dx, dy = int(w * shift), int(h * shift / 2)
    return image.crop((0, 0, cw, ch)), image.crop((dx, dy, dx + cw, dy + ch))


def bursts(folder: Path) -> list[dict]:  # type: ignore[type-arg]
    """How often two different frames of one scene fall within each hash threshold: links `dupes` would make
    between photos that are not copies."""
    distances: dict[float, list[int]] = {s: [] for s in BURST_SHIFTS}
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for shift in BURST_SHIFTS:
            hashes = []
            for n, frame in enumerate(_burst_pair(image, shift)):
                path = folder / f"{name}-burst-{shift}-{n}.jpg"
                frame.save(path, quality=90)
                hashes.append(_bits(decode(path).record.dhash or ""))
            distances[shift].append(int((hashes[0] != hashes[1]).sum()))
    return [
        {
            "shift": shift,
            "median_distance": float(np.median(found)),
            **{f"within_{t}": sum(d <= t for d in found) / len(found) for t in THRESHOLDS},
        }
        for shift, found in distances.items()
    ]


def _bits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="dupes-quality-"))
    originals: list[np.ndarray] = []
    watch: list[np.ndarray] = []  # photos x 8 orientations x 64 bits
    copies: dict[str, list[np.ndarray]] = {t: [] for t in TRANSFORMS}
    for name in PHOTOS:
        pixels = getattr(skimage.data, name)()
        image = Image.fromarray(pixels).convert("RGB")
        original = folder / f"{name}.png"
        image.save(original)
        originals.append(_bits(decode(original).record.dhash or ""))
        watch.append(np.array([_bits(h) for h in watch_hashes(original)[1]]))
        for transform, (fn, quality) in TRANSFORMS.items():
            copy = folder / f"{name}-{transform.replace(' ', '_').replace('%', '')}.jpg"
            fn(image).save(copy, quality=quality)
            copies[transform].append(_bits(decode(copy).record.dhash or ""))
    orig = np.array(originals)
    watched = np.array(watch)
    results = []
    for transform, hashes in copies.items():
        c = np.array(hashes)
        plain = (orig[:, None, :] != c[None, :, :]).sum(-1)  # photo i vs copy j
        oriented = (watched[:, :, None, :] != c[None, None, :, :]).sum(-1).min(1)
        for rule, distances in (("hash", plain), ("hash, watch list (8 orientations)", oriented)):
            positives = np.diag(distances)
            negatives = distances[~np.eye(len(PHOTOS), dtype=bool)]
            for threshold in THRESHOLDS:
                tp = int((positives <= threshold).sum())
                fp = int((negatives <= threshold).sum())
                results.append(
                    {
                        "transform": transform,
                        "rule": rule,
                        "threshold": threshold,
                        "recall": tp / len(positives),
                        "precision": tp / (tp + fp) if tp + fp else 1.0,
                        "true_positives": tp,
                        "false_positives": fp,
                        "median_positive_distance": float(np.median(positives)),
                        "min_negative_distance": int(negatives.min()),
                    }
                )
    burst_rows = bursts(folder)
    out = write_results(
        "dupes_quality.json", {"photos": PHOTOS, "thresholds": THRESHOLDS, "results": results, "bursts": burst_rows}
    )
    _print_table(results)
    print("\nbursts (two frames of one scene, not copies): share of pairs within max distance\n")
    print("| camera moved by | median distance | " + " | ".join(f"<= {t}" for t in THRESHOLDS) + " |")
    print("|---|---|" + "---|" * len(THRESHOLDS))
    for b in burst_rows:
        cells = [f"{b[f'within_{t}']:.2f}" for t in THRESHOLDS]
        print(f"| {b['shift']:.0%} of the width | {b['median_distance']:g} | " + " | ".join(cells) + " |")
    meets = [
        t
        for t in THRESHOLDS
        if all(
            r["recall"] >= 0.95 and r["precision"] >= 0.99
            for r in results
            if r["rule"] == "hash" and r["threshold"] == t and r["transform"] in REQUIRED
        )
    ]
    print(
        f"\nsmallest max distance with recall >= 0.95 at precision >= 0.99 on {', '.join(REQUIRED)}:"
        f" {meets[0] if meets else 'none'}"
    )
    print(f"wrote {out}", file=sys.stderr)


def _print_table(results: list[dict]) -> None:  # type: ignore[type-arg]
    for rule in ("hash", "hash, watch list (8 orientations)"):
        print(f"\n{rule}: recall / precision at max distance\n")
        print("| transform | median distance | " + " | ".join(f"<= {t}" for t in THRESHOLDS) + " |")
        print("|---|---|" + "---|" * len(THRESHOLDS))
        for transform in TRANSFORMS:
            rows = [r for r in results if r["rule"] == rule and r["transform"] == transform]
            cells = [f"{r['recall']:.2f} / {r['precision']:.2f}" for r in rows]
            print(f"| {transform} | {rows[0]['median_positive_distance']:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
