"""Decoding a huge image costs about its decoded size once, briefly: pixels are shrunk right after decoding,
whatever the image's shape; strips far longer than wide are refused unread."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from imagedb.embed import ModelSpec
from imagedb.images import DECODE_LIMITS, MAX_PIXELS, WORKING_LONG_SIDES, decode, decode_limits
from imagedb.ingest import ingest
from imagedb.store import Store
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


def _strip_png(path: Path, width: int, height: int) -> Path:
    """A valid 8-bit grey PNG of any shape, written row by row: a 1 x 50,000,000 one is about 100 KB."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then black pixels
    rows_at_once = max(1, 1_000_000 // len(row))
    parts = []
    for start in range(0, height, rows_at_once):
        parts.append(packer.compress(row * min(rows_at_once, height - start)))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )
    return path


_SHAPES_CHILD = """
import json, sys, time
from pathlib import Path
from imagedb.files import BadImage
from imagedb.images import decode

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
base = hwm()
out = []
for p in sys.argv[1:]:
    started = time.perf_counter()
    try:
        decoded = decode(Path(p))
        result = {"pixels": decoded.pixels.size, "thumbnail": decoded.record.thumbnail_size}
    except BadImage as exc:
        result = {"reason": str(exc)}
    out.append({**result, "s": time.perf_counter() - started, "mb": hwm() - base})
print(json.dumps(out))
"""


def _decode_in_child(paths: list[Path]) -> list[dict[str, object]]:
    run = subprocess.run([sys.executable, "-c", _SHAPES_CHILD, *map(str, paths)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


STRIPS = [(1, 50_000_000), (50_000_000, 1), (2, 20_000_000), (20_000_000, 2), (3, 5_000_000), (65, 65_536)]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_a_strip_far_longer_than_wide_is_refused_unread(tmp_path: Path) -> None:
    """A 97 KB PNG of 1 x 50,000,000 pixels was stored after 7 s and 1.1 GB: Pillow holds a pointer per row, and the
    RGB conversion and the thumbnail's copy ran at full size because the shorter side could not shrink."""
    paths = [_strip_png(tmp_path / f"{w}x{h}.png", w, h) for w, h in STRIPS]
    assert all(p.stat().st_size < 200_000 for p in paths)
    results = _decode_in_child(paths)
    for (width, height), result in zip(STRIPS, results, strict=True):
        assert "times longer than wide" in str(result.get("reason")), (width, height, result)
        assert f"{width}x{height}" in str(result["reason"])
    assert results[-1]["mb"] < 20 and max(float(str(r["s"])) for r in results) < 1, results


def test_a_refused_strip_is_recorded_with_its_reason(store: Store, tiny_model: str, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    _strip_png(folder / "strip.png", 1, 2_000_000)
    Image.new("RGB", (64, 48), (10, 200, 30)).save(folder / "fine.png")
    summary = ingest(store, [folder], collection="shapes", model=ModelSpec.parse(tiny_model))
    assert (summary.added, summary.failed) == (1, 1)
    reason = store.conn.execute("SELECT reason FROM ingest_errors").fetchone()[0]
    assert "1x2000000 pixels is more than" in reason


# The last two: strips within MAX_STRIP_SIDE are stored, reduced like the others.
PANORAMAS = [(100, 90_000, "L"), (90_000, 100, "P"), (100, 90_000, "RGB"), (20_000, 600, "L"), (1, 65_535, "L")]
PANORAMAS += [(65_535, 2, "RGB")]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_a_long_panorama_costs_about_its_decoded_size_once(tmp_path: Path) -> None:
    """Within the aspect limit, the working pixels are reduced along the longer side too: before, a 100 x 90,000
    grey PNG (9 MB decoded) kept 90,000 rows through its RGB conversion and the thumbnail's copy (70 MB)."""
    paths = []
    for width, height, mode in PANORAMAS:
        image = Image.new("L", (width, height), 90)
        image.paste(200, (0, 0, width // 2 or 1, height // 2 or 1))
        path = tmp_path / f"{width}x{height}-{mode}.png"
        (image if mode == "L" else image.convert(mode)).save(path)
        paths.append(path)
    long_side = WORKING_LONG_SIDES * THUMBNAIL_SIZE
    for (width, height, mode), path in zip(PANORAMAS, paths, strict=True):
        [result] = _decode_in_child([path])
        decoded_mb = width * height * (4 if mode == "RGB" else 1) / 2**20
        assert result["mb"] < 1.6 * decoded_mb + 4, (width, height, mode, result)
        pixels = result["pixels"]
        assert max(pixels) <= long_side and min(pixels) >= 1, result  # type: ignore[call-overload]
        # The shape survives the reduction, as far as whole pixels allow.
        assert (pixels[0] > pixels[1]) == (width > height), result  # type: ignore[index]
