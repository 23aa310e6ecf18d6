"""What the benchmarks share: where results go and what they record about the machine, the synthetic rows and
vectors they load, photographs to ingest, a random-weight CLIP checkpoint, and timing helpers.

Results go to bench/results/, or to IMAGEDB_BENCH_RESULTS when set (run_all.sh --quick uses a temporary folder,
so a quick run never overwrites the committed full-size figures). write_results() adds a "meta" block to every
JSON file: the git commit (short hash, "-dirty" when tracked files outside bench/results/ have changes), the CPU
model, the cores this process may use, torch's version (when installed), Python's version and the date (UTC). A
bench that wrote a list writes {"meta": ..., "rows": [...]}. Text results carry the same facts as a first line:

    python bench/common.py --header     # run_all.sh and gpu_ingest.sh print it before each bench's output

Heavy imports (imagedb, PIL, torch, open_clip, psycopg) happen inside the functions that need them, so that
importing this module stays cheap (decode_memory.py measures memory in children that import it).
"""

from __future__ import annotations

import functools
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import psycopg
    from PIL import Image

    from imagedb.store import ImageRecord

RESULTS = Path(os.environ.get("IMAGEDB_BENCH_RESULTS") or Path(__file__).parent / "results")
RESULTS.mkdir(parents=True, exist_ok=True)
REPO = Path(__file__).resolve().parents[1]

DIM, K = 512, 10  # CLIP ViT-B-32's vector size; top-k of the recall measurements
QUERIES = 200  # held-out queries of search_set()
TEXT_GAP = 1.2  # norm of the fixed image-to-text offset: cosine ~0.64 between a point and its "caption"


# --- what a result records about where it was measured ---------------------------------------------------------


def _git_commit() -> str | None:
    """Short hash of HEAD, "-dirty" when tracked files have changes; bench/results/ does not count (a full run
    rewrites the committed results as it goes). IMAGEDB_BENCH_COMMIT, when set, is taken as it is (a tree copied
    to another machine without its .git, as for bench/gpu_ingest.sh); None outside a git checkout otherwise."""
    if os.environ.get("IMAGEDB_BENCH_COMMIT"):
        return os.environ["IMAGEDB_BENCH_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", ".",
             ":(exclude)bench/results"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if changes else "")


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _torch_version() -> str | None:
    """torch's version without importing it (seconds) when the bench has not: the installed distribution's."""
    if "torch" in sys.modules:
        return str(sys.modules["torch"].__version__)
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _machine() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "commit": _git_commit(),
        "cpu": _cpu_model(),
        "cores": cores,
        "torch": _torch_version(),
        "python": platform.python_version(),
    }


def meta() -> dict[str, Any]:
    """Where and from what a result was measured; the date is now, the rest as at this process's first call."""
    return {**_machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def header() -> str:
    """meta() as one line, the first line of a text result."""
    m = meta()
    return (
        f"# commit {m['commit'] or 'unknown'}, {m['cpu'] or 'unknown CPU'}, {m['cores']} cores available,"
        f" torch {m['torch'] or 'not installed'}, Python {m['python']}, {m['date']}"
    )


def write_results(name: str, data: dict[str, Any] | list[Any]) -> Path:
    """RESULTS/name as JSON with a "meta" block first (a list goes under "rows"); returns the path."""
    body = {"meta": meta(), **data} if isinstance(data, dict) else {"meta": meta(), "rows": data}
    path = RESULTS / name
    path.write_text(json.dumps(body, indent=1, default=float) + "\n")
    return path


# --- synthetic rows and vectors --------------------------------------------------------------------------------


def image_record(
    path: str,
    sha256: str,
    mtime: datetime,
    *,
    width: int = 1,
    height: int = 1,
    format: str = "JPEG",  # noqa: A002 - ImageRecord's field
    thumbnail: bytes = b"",
    thumbnail_size: tuple[int, int] = (1, 1),
    dhash: str | None = None,
) -> ImageRecord:
    """A synthetic ImageRecord: no EXIF, no camera, no date taken; a 1 x 1 JPEG with no thumbnail unless told."""
    from imagedb.store import ImageRecord

    return ImageRecord(
        path=path,
        sha256=sha256,
        size_bytes=1,
        mtime=mtime,
        width=width,
        height=height,
        format=format,
        taken_at=None,
        camera_make=None,
        camera_model=None,
        orientation=None,
        exif={},
        thumbnail=thumbnail,
        thumbnail_size=thumbnail_size,
        dhash=dhash,
    )


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, as float32."""
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered_vectors(
    count: int,
    rng: np.random.Generator,
    *,
    spread: float = 0.6,
    centres: int = 1000,
    chunk: int | None = None,
    noise_dtype: type = np.float64,
) -> np.ndarray:
    """`count` unit vectors (DIM) drawn around `centres` random centres with Gaussian noise of `spread` (CLIP
    embeddings cluster too). `chunk` draws them in slices (a 1M x 512 float64 temporary would be 4 GB): the same
    vectors as one draw while count <= chunk. noise_dtype float32 computes in float32 throughout."""
    middles = rng.standard_normal((centres, DIM)).astype(np.float32)
    out = np.empty((count, DIM), dtype=np.float32)
    step = chunk or max(count, 1)
    for start in range(0, count, step):
        stop = min(start + step, count)
        picked = middles[rng.integers(0, centres, stop - start)]
        out[start:stop] = unit(
            picked + spread * rng.standard_normal((stop - start, DIM)).astype(noise_dtype, copy=False)
        )
    return out


def isotropic_vectors(count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` unit vectors uniform on the sphere: no structure, the hard case for any graph index."""
    points = rng.standard_normal((count, DIM)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points


def search_set(n: int, spread: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n clustered vectors, QUERIES held-out ones as image queries, and text-like queries: the held-out points
    pushed by one fixed offset of norm TEXT_GAP, as CLIP's text vectors sit apart from its image vectors."""
    points = clustered_vectors(n + QUERIES, rng, spread=spread, chunk=100_000)
    gap = rng.standard_normal(DIM).astype(np.float32)
    gap *= TEXT_GAP / np.linalg.norm(gap)
    text = points[n:] + gap
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return points[:n], points[n:], text


def exact_top_k(data: np.ndarray, queries: np.ndarray, keep: np.ndarray | None = None) -> list[list[int]]:
    """Each query's K nearest rows of `data` by inner product (cosine on unit vectors), best first, among the rows
    `keep` marks when given: the ground truth of recall."""
    out = []
    candidates = np.flatnonzero(keep) if keep is not None else None
    for q in queries:
        scores = data @ q if candidates is None else data[candidates] @ q
        top = np.argpartition(-scores, K)[:K]
        top = top[np.argsort(-scores[top])]
        out.append((top if candidates is None else candidates[top]).tolist())
    return out


def recall_at_k(found: Sequence[Sequence[int]], truth: Sequence[Sequence[int]] | np.ndarray) -> float:
    """Mean share of each query's true top K among what it found."""
    expected = truth.tolist() if isinstance(truth, np.ndarray) else truth
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, expected, strict=True)]))


# --- pgvector tables outside imagedb's schema ------------------------------------------------------------------


def connect(url: str) -> psycopg.Connection:
    """An autocommit connection with pgvector's types registered."""
    import psycopg
    from pgvector.psycopg import register_vector

    conn = psycopg.connect(url, autocommit=True)
    register_vector(conn)
    return conn


def copy_vectors(conn: psycopg.Connection, table: str, kind: str, data: np.ndarray) -> float:
    """Binary COPY of `data` into table (id, embedding `kind`); vectors/s."""
    from pgvector import HalfVector, Vector

    wrap = HalfVector if kind == "halfvec" else Vector
    started = time.perf_counter()
    with conn.cursor().copy(f"COPY {table} (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["integer", kind])
        for i, v in enumerate(data):
            copy.write_row((i, wrap(v)))
    return len(data) / (time.perf_counter() - started)


def server_ms(url: str, table: str, kind: str, queries: np.ndarray, ef: int) -> list[float]:
    """Server time (EXPLAIN ANALYZE) of each query's top K on table at hnsw.ef_search `ef`."""
    from pgvector import HalfVector, Vector

    conn = connect(url)
    conn.execute(f"SET hnsw.ef_search = {ef}")
    wrap = HalfVector if kind == "halfvec" else Vector
    times = []
    for q in queries:
        plan = conn.execute(
            f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT id FROM {table} ORDER BY embedding <=> %s LIMIT {K}", (wrap(q),)
        ).fetchone()[0]  # type: ignore[index]
        times.append(plan[0]["Execution Time"])
    conn.close()
    return times


# --- photographs and a model -----------------------------------------------------------------------------------

# Colour photographs of scikit-image, made into camera-like JPEGs by photo_files().
CAMERA_PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]

# Every photograph scikit-image ships without a download (chelsea and cat are the same picture). Its synthetic
# graphics are left out: the Shepp-Logan phantom, nearly black and symmetric, has no stable hash.
SKIMAGE_PHOTOS = [
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "cell",
    "microaneurysms",
]


def _photo(i: int) -> bytes:
    """One camera-like JPEG: a scikit-image photograph resized to 1600-2400 x 1200-1800, turned, tinted."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(i)
    image = Image.fromarray(getattr(skimage.data, CAMERA_PHOTOS[i % len(CAMERA_PHOTOS)])()).convert("RGB")
    size = (int(rng.integers(1600, 2400)), int(rng.integers(1200, 1800)))
    big = image.resize(size).rotate(float(rng.uniform(-3, 3)))
    tint = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 40, 3)))
    out = io.BytesIO()
    Image.blend(big, tint, 0.1).save(out, format="JPEG", quality=90)
    return out.getvalue()


def photo_files(folder: Path, count: int, unique: int | None = None) -> list[Path]:
    """`count` different files: `unique` photographs made in parallel, the rest copies of them with a few bytes
    after the JPEG's end marker (decoders ignore them, the SHA-256 differs, so no vector is reused) - the same
    decoding work as distinct photos, without minutes of making thousands of them."""
    from concurrent.futures import ProcessPoolExecutor

    unique = min(count, unique or count)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        photos = list(pool.map(_photo, range(unique)))
    paths = []
    for i in range(count):
        path = folder / f"photo_{i:05d}.jpg"
        path.write_bytes(photos[i % unique] + (b"" if i < unique else i.to_bytes(8, "little")))
        paths.append(path)
    return paths


def _watermark(image: Image.Image) -> Image.Image:
    from PIL import Image, ImageDraw, ImageFont

    marked = image.convert("RGBA")
    layer = Image.new("RGBA", marked.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default(size=max(12, marked.width // 12))
    draw.text((marked.width * 0.05, marked.height * 0.8), "© imagedb 2026", font=font, fill=(255, 255, 255, 160))
    return Image.alpha_composite(marked, layer).convert("RGB")


def _crop(image: Image.Image) -> Image.Image:
    w, h = image.size  # 10% of the area gone: 5% from each side, about
    dx, dy = int(w * 0.026), int(h * 0.026)
    return image.crop((dx, dy, w - dx, h - dy))


def copy_transforms() -> dict[str, tuple[Callable[[Image.Image], Image.Image], int]]:
    """The ways a copy of a photograph differs from it: name -> (transform, JPEG quality of the copy)."""
    from PIL import Image, ImageEnhance, ImageOps

    return {
        "resize 50%": (lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS), 90),
        "resize 25%": (lambda im: im.resize((im.width // 4, im.height // 4), Image.Resampling.LANCZOS), 90),
        "JPEG quality 30": (lambda im: im, 30),
        "brightness +20%": (lambda im: ImageEnhance.Brightness(im).enhance(1.2), 90),
        "brightness -20%": (lambda im: ImageEnhance.Brightness(im).enhance(0.8), 90),
        "text watermark": (_watermark, 90),
        "crop 10%": (_crop, 90),
        "grayscale": (lambda im: ImageOps.grayscale(im).convert("RGB"), 90),
        "horizontal flip": (lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 90),
        "rotate 90°": (lambda im: im.transpose(Image.Transpose.ROTATE_90), 90),
    }


def random_clip_checkpoint(folder: Path) -> str:
    """ViT-B-32 with random weights (speed does not depend on the weights) saved as a local checkpoint; the model
    spec that loads it through imagedb's own path."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = folder / "vit-b-32-random.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return f"ViT-B-32:{path}"


# --- timing ----------------------------------------------------------------------------------------------------


def median_ms(fn: Callable[[], object], repeat: int = 30) -> float:
    """Median wall time of fn() in ms over `repeat` calls, after one call to warm up."""
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def timed_process(
    command: list[str], env: dict[str, str], *, text: bool = False
) -> tuple[float, subprocess.CompletedProcess[Any]]:
    """Run command to its end (an error if it fails), output captured; its wall time in seconds and the result."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=text)
    return time.perf_counter() - started, done


if __name__ == "__main__":
    if sys.argv[1:] == ["--header"]:
        print(header())
    elif sys.argv[1:] == ["--meta"]:
        print(json.dumps(meta(), indent=1))
    else:
        sys.exit("usage: python bench/common.py --header | --meta")
