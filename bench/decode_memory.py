"""Peak memory of decoding one huge image: the decode path before the change against images.decode now.

Each measurement runs in a fresh child process and reports its peak RSS (resource.getrusage ru_maxrss) minus
its RSS after imports, so numbers are what decoding the image added. Images: 81 megapixels (9000 x 9000) as a
small PNG (one colour with a little noise: a few hundred kB that expand to 243 MB of RGB), the same as a
palette PNG and a JPEG; and a batch of 8 such PNGs prepared one after the other and kept until "stored", as
ingest keeps a batch (before: each entry kept its full-size pixels; now: record and model-sized pixels only).

    python bench/decode_memory.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write_results

SIDE = 9000


def image_paths(folder: Path) -> dict[str, Path]:
    return {"png_rgb": folder / "big.png", "png_palette": folder / "big-palette.png", "jpeg": folder / "big.jpg"}


def make_images(folder: Path) -> None:
    # Runs in a child of its own: Linux carries a process's peak RSS across fork and exec, so the measuring
    # children must descend from a parent that never held a big image.
    import numpy as np
    from PIL import Image

    image = Image.new("RGB", (SIDE, SIDE), (90, 140, 200))
    rng = np.random.default_rng(0)
    for _ in range(200):  # a few specks, so that the file is an image and not a constant
        x, y = (int(v) for v in rng.integers(0, SIDE - 50, 2))
        image.paste(tuple(int(c) for c in rng.integers(0, 255, 3)), (x, y, x + 50, y + 50))
    paths = image_paths(folder)
    image.save(paths["png_rgb"], compress_level=9)
    image.quantize(16).save(paths["png_palette"], compress_level=9)
    image.save(paths["jpeg"], quality=90)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def old_decode(path: Path):  # noqa: ANN201 - the pipeline as it was before this change, step by step
    import hashlib
    import io

    from PIL import Image, ImageOps

    from imagedb.images import _to_rgb
    from imagedb.thumbnails import make_thumbnail

    data = path.read_bytes()
    hashlib.sha256(data).hexdigest()
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (256, 256))
    image.load()
    pixels = _to_rgb(ImageOps.exif_transpose(image))
    make_thumbnail(pixels)
    return pixels  # ingest kept these in the prepared batch


def new_decode(path: Path):  # noqa: ANN201
    from imagedb.images import decode

    return decode(path).record  # ingest now keeps the record (and a model-sized tensor), not the pixels


def child(which: str, paths: list[str]) -> None:
    import PIL.Image  # noqa: F401 - imports before the baseline
    import pillow_heif  # noqa: F401

    import imagedb.images  # noqa: F401

    base = _rss_mb()
    decode = old_decode if which == "before" else new_decode
    kept = [decode(Path(p)) for p in paths]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_added_mb": round(peak - base, 1), "kept": len(kept)}))


def measure(which: str, paths: list[Path]) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", which, *map(str, paths)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)["peak_added_mb"]


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, __file__, "--make", folder], check=True)
        paths = image_paths(Path(folder))
        batch = []
        for i in range(8):
            copy = Path(folder) / f"batch_{i}.png"
            copy.write_bytes(paths["png_rgb"].read_bytes())
            batch.append(copy)
        cases = {name: [path] for name, path in paths.items()} | {"batch_of_8_png": batch}
        sizes = {name: path.stat().st_size for name, path in paths.items()}
        print(f"{SIDE} x {SIDE} = {SIDE * SIDE / 1e6:.0f} megapixels; file sizes: {sizes}")
        print(f"{'case':16} {'before MB':>10} {'after MB':>10}")
        for name, files in cases.items():
            before, after = measure("before", files), measure("after", files)
            results[name] = {"before_mb": before, "after_mb": after}
            print(f"{name:16} {before:10.1f} {after:10.1f}")
    write_results("decode_memory.json", results)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--make"]:
        make_images(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3:])
    else:
        main()
