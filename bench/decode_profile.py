"""Where decoding goes inside `imagedb ingest`, threads against processes, and what each handover costs.

All in this process on the same camera-size JPEGs (bench/common.py's photographs), each variant `--rounds` times
in turn (the machine may be shared: each round runs every variant once, and the best round of each is reported):

- decode alone, as ingest's workers do it (read, decode, EXIF, SHA-256, thumbnail, perceptual hash, the model's
  preprocessing to a float tensor): 1 thread; a thread pool of one thread per CPU; a fork process pool of as many
  processes, (b) one torch thread per process, (c) the same handing back uint8 pixels instead of the float tensor
  (fewer bytes to pickle), the parent preprocessing. (a), processes left with the thread count they inherit, hung
  here at their first preprocessing: forked after the parent's torch had run multi-threaded, they wait forever on
  its OpenMP pool, so a process pool must set one torch thread in each process first;
- `imagedb ingest` end to end with a model whose image tower costs next to nothing (ViT-shaped, 224-pixel input,
  one 64-wide layer), so its rate is the decode rate inside ingest: with its thread pool, and with the pool
  swapped for the fork process pool of (b).

    python bench/decode_profile.py [--images 96] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from common import photo_files, write_results

from imagedb import cpus, embed
from imagedb import ingest as ingest_module
from imagedb.embed import ModelSpec
from imagedb.images import decode
from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store

FAST_NAME = "imagedb-profile-clip"
FAST_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
_PREPROCESS: Callable[[object], object] | None = None  # inherited by the forked processes


def _fast_model(folder: Path) -> str:
    import open_clip
    import torch

    config = folder / f"{FAST_NAME}.json"
    config.write_text(json.dumps(FAST_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    checkpoint = folder / f"{FAST_NAME}.pt"
    torch.save({"state_dict": open_clip.create_model(FAST_NAME, pretrained=None).state_dict()}, checkpoint)
    return f"{FAST_NAME}:{checkpoint}"


def _tensor(path: Path) -> object:
    decoded = decode(path, min_side=224)
    return (decoded.record, _PREPROCESS(decoded.pixels))  # type: ignore[misc]


def _pixels(path: Path) -> object:
    decoded = decode(path, min_side=224)
    return (decoded.record, decoded.pixels)


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _rate(files: list[Path], run: Callable[[list[Path]], object]) -> float:
    started = time.perf_counter()
    run(files)
    return len(files) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    global _PREPROCESS
    work = Path(tempfile.mkdtemp(prefix="imagedb-decode-profile-"))
    (work / "photos").mkdir()
    files = photo_files(work / "photos", args.images)
    spec = ModelSpec.parse(_fast_model(work))
    embedder = embed.load(spec)
    _PREPROCESS = embedder.preprocess
    workers = cpus.available()
    fork = multiprocessing.get_context("fork")
    sample = _tensor(files[0])[1]
    handover = {
        "float_tensor_bytes": len(pickle.dumps(sample)),
        "uint8_pixels_bytes": len(pickle.dumps(_pixels(files[0])[1])),
    }

    def threads(paths: list[Path]) -> object:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(_tensor, paths))

    def processes(initializer: Callable[[], None] | None, fn: Callable[[Path], object], parent: bool) -> Callable:
        def run(paths: list[Path]) -> object:
            with ProcessPoolExecutor(workers, fork, initializer=initializer) as pool:
                out = list(pool.map(fn, paths, chunksize=2))
            return [_PREPROCESS(p) for _, p in out] if parent else out  # type: ignore[misc]

        return run

    store = Store(open_connection(None, work / "home"))
    counter = iter(range(10**6))

    def ingest_with(pool_factory: Callable[[int], object]) -> Callable[[list[Path]], object]:
        def run(paths: list[Path]) -> object:
            folder = work / f"in-{next(counter)}"
            folder.mkdir()
            for i, p in enumerate(paths):  # new content each time: nothing is reused from an earlier run
                (folder / p.name).write_bytes(p.read_bytes() + folder.name.encode() + i.to_bytes(4, "little"))
            original = ingest_module.ThreadPoolExecutor
            ingest_module.ThreadPoolExecutor = pool_factory  # type: ignore[assignment,misc]
            try:
                summary = ingest_module.ingest(store, [folder], collection=folder.name, model=spec)
            finally:
                ingest_module.ThreadPoolExecutor = original  # type: ignore[misc]
            assert summary.added == len(paths) and not summary.failed, summary
            return summary

        return run

    variants: dict[str, Callable[[list[Path]], object]] = {
        "decode alone, 1 thread": lambda paths: [_tensor(p) for p in paths],
        f"decode alone, {workers} threads": threads,
        f"decode alone, {workers} processes, 1 torch thread each": processes(_one_torch_thread, _tensor, False),
        f"decode alone, {workers} processes, uint8 pixels back": processes(_one_torch_thread, _pixels, True),
        f"ingest, {workers} decode threads": ingest_with(ThreadPoolExecutor),
        f"ingest, {workers} decode processes": ingest_with(
            lambda n: ProcessPoolExecutor(n, fork, initializer=_one_torch_thread)
        ),
    }
    for run in variants.values():  # warm: first calls allocate, import and pick kernels
        run(files[:4])
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, run in variants.items():
            rates[name].append(_rate(files, run))
            print(f"round {round_ + 1}: {name}: {rates[name][-1]:.2f} images/s", flush=True)
    store.close()
    stop_embedded(work / "home")
    shutil.rmtree(work, ignore_errors=True)
    best = {name: max(r) for name, r in rates.items()}
    names = list(variants)
    rows = {
        "images": len(files),
        "workers": workers,
        "rounds": args.rounds,
        "best_images_per_s": best,
        "median_images_per_s": {name: statistics.median(r) for name, r in rates.items()},
        "all_images_per_s": rates,
        "handover": handover,
        "ingest_threads_vs_decode_threads": best[names[4]] / best[names[1]],
        "ingest_processes_vs_decode_processes": best[names[5]] / best[names[2]],
        "ingest_processes_vs_threads": best[names[5]] / best[names[4]],
        "load_average": os.getloadavg(),
    }
    for name in names:
        print(f"{best[name]:>8.2f}  {name}")
    print(f"handover per image: float tensor {handover['float_tensor_bytes']:,} bytes pickled,"
          f" uint8 pixels {handover['uint8_pixels_bytes']:,}")  # fmt: skip
    print(write_results("decode_profile.json", rows))


if __name__ == "__main__":
    main()
