"""bench/common.py, the benchmarks' shared helper, and bench/run_all.sh's coverage of bench/results/."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _common(monkeypatch: pytest.MonkeyPatch, results: Path):  # type: ignore[no-untyped-def]
    """bench/common.py loaded afresh, writing into `results`."""
    monkeypatch.setenv("IMAGEDB_BENCH_RESULTS", str(results))
    spec = importlib.util.spec_from_file_location("bench_common_under_test", BENCH / "common.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_write_results_adds_meta(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    common = _common(monkeypatch, tmp_path)
    common.write_results("one.json", {"n": 3})
    common.write_results("rows.json", [1, 2])
    one = json.loads((tmp_path / "one.json").read_text())
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert list(one) == ["meta", "n"] and one["n"] == 3
    assert rows["rows"] == [1, 2]
    meta = one["meta"]
    assert set(meta) == {"commit", "cpu", "cores", "torch", "python", "date"}
    assert meta["commit"] is None or re.fullmatch(r"[0-9a-f]{4,40}(-dirty)?", meta["commit"])
    assert meta["cores"] >= 1 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["date"])
    assert common.header().startswith("# commit ")


def test_vectors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    common = _common(monkeypatch, tmp_path)
    whole = common.clustered_vectors(300, np.random.default_rng(0))
    sliced = common.clustered_vectors(300, np.random.default_rng(0), chunk=1000)
    assert whole.dtype == np.float32 and whole.shape == (300, common.DIM)
    assert np.array_equal(whole, sliced)
    assert np.allclose(np.linalg.norm(whole, axis=1), 1, atol=1e-5)
    data, image_q, text_q = common.search_set(500, 0.6, np.random.default_rng(0))
    assert len(data) == 500 and len(image_q) == len(text_q) == common.QUERIES
    truth = common.exact_top_k(data, image_q[:5])
    assert common.recall_at_k(truth, truth) == 1.0


def test_run_all_makes_every_results_file() -> None:
    """Each file in bench/results/ has a row in its README, and that row's command is a line of run_all.sh (or
    the GPU script)."""
    results = BENCH / "results"
    rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", (results / "README.md").read_text(), flags=re.M))
    assert set(rows) == {p.name for p in results.iterdir()} - {"README.md"}
    run_all = (BENCH / "run_all.sh").read_text()
    full = run_all[run_all.index("\nelse\n") :]
    for name, command in rows.items():
        if command == "bash bench/gpu_ingest.sh":
            assert (BENCH / "gpu_ingest.sh").exists()
            continue
        assert re.search(rf"^  run \S+ {re.escape(command.removeprefix('python '))}$", full, flags=re.M), name
        stem = name.rsplit(".", 1)[0]
        if name.endswith((".txt", ".md")):
            assert f"run {name} {command.removeprefix('python ')}" in full, name
        else:
            assert stem.split("_")[0] in command, name
