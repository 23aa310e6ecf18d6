"""JPEG decoding on the embedder's GPU (imagedb/gpu_decode.py): the same stored values as the CPU way
(images.decode) within the stated tolerances, and every file the GPU does not take going the CPU way. On a CPU
the device path runs through torchvision's CPU JPEG decoder; the CUDA test runs where a GPU is."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagedb import gpu_decode
from imagedb.embed import ModelSpec
from imagedb.images import Decoded, decode, decode_limits
from imagedb.ingest import ingest
from imagedb.store import Store


def _photo(path: Path, size: tuple[int, int], orientation: int = 1, mode: str = "RGB") -> Path:
    """A JPEG with a gradient and a red block in the top-left corner, so a wrong turn or flip shows."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    rgb[: h // 4, : w // 4] = (255, 0, 0)
    image = Image.fromarray(rgb, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    tags = Image.Exif()
    tags[0x0112] = orientation
    tags[0x010F] = "Camera Maker"
    image.save(path, "JPEG", quality=92, exif=tags.tobytes())
    return path


def _on_device(path: Path, device: str = "cpu", min_side: int = 224) -> Decoded | None:
    header = gpu_decode.read_header(path, keep_gps=False, keep_identifying=False)
    if header is None:
        return None
    [pixels] = gpu_decode.decode_pixels([header], device, decode_limits(min_side).working_side)
    return None if pixels is None else gpu_decode.finish(header, pixels)


def _thumbnail(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)


def _assert_equivalent(gpu: Decoded, cpu: Decoded) -> None:
    """The tolerances the module's docstring states."""
    a, b = gpu.record, cpu.record
    for name in ("path", "sha256", "size_bytes", "mtime", "width", "height", "format", "orientation", "exif",
                 "taken_at", "camera_make", "camera_model", "thumbnail_size"):  # fmt: skip
        assert getattr(a, name) == getattr(b, name), name
    assert gpu.pixels.size == cpu.pixels.size
    difference = np.abs(_thumbnail(a.thumbnail) - _thumbnail(b.thumbnail))
    assert difference.mean() <= 4.0, difference.mean()  # a wrong turn or flip is ~100
    assert a.dhash is not None and b.dhash is not None
    assert sum(x != y for x, y in zip(a.dhash, b.dhash, strict=True)) <= 6


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_orientation_matches_the_cpu_way(tmp_path: Path, orientation: int) -> None:
    path = _photo(tmp_path / "p.jpg", (1200, 800), orientation)
    gpu = _on_device(path)
    assert gpu is not None
    _assert_equivalent(gpu, decode(path))


@pytest.mark.parametrize("size", [(4000, 3000), (1601, 1199), (500, 300), (230, 1000), (100, 60), (7, 5)])
def test_sizes_match_the_cpu_way(tmp_path: Path, size: tuple[int, int]) -> None:
    path = _photo(tmp_path / "p.jpg", size, 6)
    cpu = decode(path)
    assert gpu_decode.working_size(*size, decode_limits(224).working_side) == tuple(
        reversed(cpu.pixels.size)  # orientation 6 turns it
    )
    gpu = _on_device(path)
    assert gpu is not None
    _assert_equivalent(gpu, cpu)


def test_greyscale_jpeg_is_taken_and_matches(tmp_path: Path) -> None:
    path = _photo(tmp_path / "grey.jpg", (900, 700), 3, mode="L")
    gpu = _on_device(path)
    assert gpu is not None and gpu.pixels.mode == "RGB"
    _assert_equivalent(gpu, decode(path))


def test_what_the_gpu_does_not_take_goes_the_cpu_way(tmp_path: Path) -> None:
    good = _photo(tmp_path / "good.jpg", (640, 480), 8)
    png = tmp_path / "image.png"
    Image.new("RGB", (50, 40), (1, 2, 3)).save(png)
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (64, 48), (10, 20, 30, 40)).save(cmyk, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])  # the header parses; the pixels are not there
    text = tmp_path / "notes.jpg"
    text.write_bytes(b"\xff\xd8\xff but not a JPEG at all")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(good.read_bytes())
    paths = [good, png, cmyk, truncated, text, outside, tmp_path / "missing.jpg"]
    with ThreadPoolExecutor(1) as pool:  # one thread: the tasks wait on each other without deadlock
        futures = gpu_decode.submit_batch(
            pool, paths, "cpu", keep_gps=False, keep_identifying=False, min_side=224,
            take=lambda p: p != outside, on_cpu=lambda p: ("cpu", p.name),
            prepare=lambda p, d: ("gpu", p.name, d.record.sha256),
        )  # fmt: skip
        results = [f.result(timeout=60) for f in futures]
    assert results[0][:2] == ("gpu", "good.jpg") and results[0][2] == decode(good).record.sha256
    assert results[1:] == [("cpu", p.name) for p in paths[1:]]


def test_a_decoder_that_fails_the_batch_still_decodes_the_good_files(tmp_path: Path) -> None:
    good = _photo(tmp_path / "good.jpg", (640, 480))
    truncated = tmp_path / "truncated.jpg"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])  # header and part of the scan
    headers = [gpu_decode.read_header(p, keep_gps=False, keep_identifying=False) for p in (good, truncated, good)]
    assert all(h is not None for h in headers)
    pixels = gpu_decode.decode_pixels(headers, "cpu", 256)  # type: ignore[arg-type]
    assert pixels[0] is not None and pixels[2] is not None
    assert pixels[0].size == pixels[2].size == decode(good).pixels.size


def test_the_gpu_decodes_only_for_a_cuda_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu_decode.device_for("cpu") is None
    assert gpu_decode.device_for("cuda:1") == "cuda:1"
    monkeypatch.setenv(gpu_decode.ENABLE_ENV, "0")
    assert gpu_decode.device_for("cuda") is None


def test_on_cuda_the_gpu_decoder_matches_the_cpu_way(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    for orientation in (1, 3, 6, 8):
        path = _photo(tmp_path / f"{orientation}.jpg", (3000, 2000), orientation)
        gpu = _on_device(path, "cuda")
        assert gpu is not None
        _assert_equivalent(gpu, decode(path))


@pytest.mark.slow
def test_ingest_through_the_device_decoder_stores_what_the_cpu_way_stores(
    store: Store, tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, orientation in enumerate((1, 6, 3)):
        _photo(folder / f"{i}.jpg", (900 + 50 * i, 600), orientation)
    Image.new("RGB", (80, 60), (9, 9, 9)).save(folder / "flat.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    spec = ModelSpec.parse(tiny_model)
    cpu = ingest(store, [folder], collection="cpu", model=spec)
    taken: list[str] = []
    real = gpu_decode.decode_pixels

    def counted(headers, device, side):  # type: ignore[no-untyped-def]
        taken.extend(h.path.name for h in headers)
        return real(headers, device, side)

    # The embedder runs on the CPU here: decode "on the device" with torchvision's CPU decoder instead.
    monkeypatch.setattr(gpu_decode, "device_for", lambda device: "cpu")
    monkeypatch.setattr(gpu_decode, "decode_pixels", counted)
    gpu = ingest(store, [folder], collection="gpu", model=spec)
    assert sorted(taken) == ["0.jpg", "1.jpg", "2.jpg"]
    assert (cpu.added, cpu.failed) == (gpu.added + gpu.reused, gpu.failed) == (4, 1)  # same content: reused
    rows = store.conn.execute(
        "SELECT c.name, i.path, i.sha256, i.width, i.height, i.format, i.orientation, i.exif, t.width, t.height"
        " FROM images i JOIN collections c ON c.id = i.collection_id JOIN thumbnails t ON t.image_id = i.id"
        " ORDER BY i.path, c.name"
    ).fetchall()
    by_collection = {name: [r[1:] for r in rows if r[0] == name] for name in ("cpu", "gpu")}
    assert by_collection["cpu"] == by_collection["gpu"]
