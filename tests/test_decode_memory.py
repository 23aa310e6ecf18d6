"""Decoding a huge image costs about its decoded size once, briefly: pixels are shrunk right after decoding."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from imagedb.images import DECODE_LIMITS, MAX_PIXELS, decode, decode_limits
from imagedb.thumbnails import THUMBNAIL_SIZE

SIDE = 6000  # 36 megapixels: 144 MB as Pillow holds RGB (4 bytes a pixel)


def _big(path: Path, mode: str) -> Path:
    image = Image.new("RGB", (SIDE, SIDE // 2), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, SIDE // 2, SIDE // 2))  # left half blue
    if mode == "P":
        image = image.quantize(4)
    elif mode in ("1", "L", "I;16"):
        image = image.convert("L").point(lambda v: 255 if v > 60 else 0).convert(mode) if mode != "I;16" else None
        if image is None:
            image = Image.new("I;16", (SIDE, SIDE // 2), 60000)
    image.save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["RGB", "P", "1", "L", "I;16"])
def test_decoded_pixels_are_model_sized(tmp_path: Path, mode: str) -> None:
    decoded = decode(_big(tmp_path / f"big-{mode}.png", mode))
    assert (decoded.record.width, decoded.record.height) == (SIDE, SIDE // 2)  # as stored in the file
    short = min(decoded.pixels.size)
    assert THUMBNAIL_SIZE <= short < 2 * THUMBNAIL_SIZE, decoded.pixels.size
    assert decoded.pixels.mode == "RGB"
    if mode in ("RGB", "P"):  # the picture survives the shrinking: blue left, red right
        left = decoded.pixels.getpixel((5, short // 2))
        right = decoded.pixels.getpixel((decoded.pixels.width - 5, short // 2))
        assert left[2] > 150 > left[0] and right[0] > 150 > right[2], (left, right)


def test_a_larger_model_gets_larger_pixels(tmp_path: Path) -> None:
    decoded = decode(_big(tmp_path / "big.png", "RGB"), min_side=336)
    assert 336 <= min(decoded.pixels.size) < 2 * 336
    assert decode_limits(336).working_side == 336 and DECODE_LIMITS.max_pixels == MAX_PIXELS


_CHILD = """
import json, sys
from pathlib import Path
import imagedb.images
from imagedb.images import decode

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
base = hwm()
kept = [decode(Path(p)).record for p in sys.argv[1:]]
print(json.dumps(hwm() - base))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_peak_memory_is_about_one_decoded_image(tmp_path: Path) -> None:
    path = _big(tmp_path / "big.png", "RGB")
    run = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    added_mb = json.loads(run.stdout)
    decoded_mb = SIDE * SIDE // 2 * 4 / 2**20  # 69 MB
    # Before: the full-size RGB image, its upright copy and the thumbnail's copy at once (3x), per image.
    assert added_mb < 1.6 * decoded_mb, added_mb


_PREPROCESS_CHILD = """
import json, sys
from PIL import Image
from imagedb import embed
from imagedb.embed import ModelSpec

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
embedder = embed.load(ModelSpec.parse(sys.argv[1]))
base = hwm()
shapes = [tuple(embedder.preprocess(Image.new("RGB", size)).shape) for size in ((1, 60000), (60000, 1), (3, 5000))]
print(json.dumps({"mb": hwm() - base, "shapes": shapes}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_an_image_far_longer_than_wide_costs_no_memory_to_preprocess(tiny_model: str) -> None:
    """A 1 x 60000 PNG of 312 bytes made the model's resize of the shortest side produce
    224 x 13.4 million pixels (14 GB for one API query). Only the centre square is used: the rest is cut first."""
    run = subprocess.run([sys.executable, "-c", _PREPROCESS_CHILD, tiny_model], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert all(shape[1:] == [64, 64] for shape in result["shapes"]), result  # the tiny model's input size
    assert result["mb"] < 150, result  # before: 1 x 60000 took over a gigabyte, even at 64 px
