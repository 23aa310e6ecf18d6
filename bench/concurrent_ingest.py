"""Two ingests of one folder at once share the files (issue 23): their CPU time together against one ingest's.

Each `imagedb ingest` is a process of its own, as when a user starts a second one in another terminal (or a cron
job meets a manual run). Measured on the same embedded server and the same files, in this order:

- one: a single ingest of the folder into a fresh collection;
- two at once: two ingests of the folder started together into another fresh collection;
- fixed: an ingest of one small new image (Python, torch, the model, the connection), which each process pays
  whatever it stores.

Each on a server of its own: identical content already stored anywhere in a database is not embedded again, which
would hide the embedding work of the later experiments.

CPU is user + system time of the imagedb processes (getrusage of the children), not the server's. The claims
divide the decoding and embedding; each process still starts Python and torch and loads the model.

    python bench/concurrent_ingest.py [--images 96] [--model tiny|vit]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import photo_files, random_clip_checkpoint, write_results

from imagedb.pg.database import open_connection
from imagedb.pg.embedded import stop_embedded
from imagedb.store import Store


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ingests(command: list[str], env: dict[str, str], count: int) -> tuple[float, float, list[str]]:
    """`count` copies of `command` started together: (wall s, CPU s of all, their summaries)."""
    cpu, started = _cpu(), time.perf_counter()
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(count)]  # fmt: skip
    outputs = [run.communicate() for run in runs]
    for run, (_, err) in zip(runs, outputs, strict=True):
        if run.returncode:
            sys.exit(err)
    return time.perf_counter() - started, _cpu() - cpu, [out.strip().splitlines()[-1] for out, _ in outputs]


def _added(summary: str) -> int:
    return int(re.search(r"added (\d+)", summary).group(1))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--model", choices=["vit", "tiny"], default="vit")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imagedb-concurrent-bench-"))
    folder = work / "photos"
    folder.mkdir()
    photo_files(folder, args.images, unique=min(args.images, 24))
    if args.model == "vit":
        model = random_clip_checkpoint(work)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_model import make_tiny_model

        model = make_tiny_model(work)
    (work / "small").mkdir()
    photo_files(work / "small", 1)
    executable = str(Path(sys.executable).with_name("imagedb"))

    def on_server(name: str, paths: list[Path], count: int) -> tuple[float, float, list[str]]:
        home = work / name
        Store(open_connection(None, home)).close()  # the server started and the database made, not timed
        env = {**os.environ, "IMAGEDB_HOME": str(home), "IMAGEDB_MODEL": model}
        env.pop("IMAGEDB_DATABASE_URL", None)
        command = [executable, "ingest", *map(str, paths), "--batch-size", str(args.batch_size)]
        try:
            return _ingests(command, env, count)
        finally:
            stop_embedded(home)

    try:
        one_wall, one_cpu, one = on_server("one", [folder], 1)
        two_wall, two_cpu, two = on_server("two", [folder], 2)
        idle_wall, idle_cpu, _ = on_server("fixed", [work / "small"], 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "images": args.images,
        "model": "ViT-B-32 (random weights)" if args.model == "vit" else "tiny CLIP (tests)",
        "one_ingest": {"wall_s": one_wall, "cpu_s": one_cpu, "summary": one[0]},
        "two_at_once": {"wall_s": two_wall, "cpu_s": two_cpu, "summaries": two, "added": [_added(s) for s in two]},
        "fixed_process_one_image": {"wall_s": idle_wall, "cpu_s": idle_cpu},
        "two_over_one_cpu": two_cpu / one_cpu,
        "two_over_one_cpu_beyond_idle": (two_cpu - 2 * idle_cpu) / (one_cpu - idle_cpu),
    }
    where = f"{os.cpu_count()} CPUs, each experiment on a server of its own"
    print(f"{args.images} camera-like JPEGs, {result['model']}, {where}:")
    print(f"  one ingest          {one_cpu:7.1f} s CPU  {one_wall:6.1f} s wall   {one[0]}")
    stored = result["two_at_once"]["added"]
    print(f"  two at once         {two_cpu:7.1f} s CPU  {two_wall:6.1f} s wall   stored {stored}")
    for summary in two:
        print(f"                      {summary}")
    print(f"  fixed, one image    {idle_cpu:7.1f} s CPU  {idle_wall:6.1f} s wall   (Python, torch, the model)")
    print(f"  two at once / one: {result['two_over_one_cpu']:.2f} x the CPU; beyond each process's fixed cost:"
          f" {result['two_over_one_cpu_beyond_idle']:.2f} x")  # fmt: skip
    write_results("concurrent_ingest.json", result)


if __name__ == "__main__":
    main()
