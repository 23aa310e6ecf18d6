"""Binary quantisation per model (`imagedb db reindex --quantize binary --rerank N`): a Hamming HNSW index on
binary_quantize(embedding), candidates re-ranked exactly on the stored halfvec, the halfvec index kept."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from imagedb.cli import main
from imagedb.store import Store
from imagedb.store.index import binary_index_name, hnsw_index_name

from helpers import fill_synthetic


@pytest.mark.slow
def test_quantize_binary_builds_the_index_and_searches_rerank_exactly(store: Store, database_url: str) -> None:
    collection = fill_synthetic(store, 3000, dim=64)
    result = CliRunner().invoke(
        main, ["--database-url", database_url, "db", "reindex", "--quantize", "binary", "--rerank", "300"]
    )
    assert result.exit_code == 0, result.output
    assert "re-rank 300 candidates" in result.output
    quantized = store.models.get_collection(collection.name)
    assert quantized is not None and quantized.rerank == 300
    query = np.random.default_rng(9).standard_normal(64).astype(np.float32)
    plan = store.search.explain_nearest(quantized, query, 10)
    assert f"Index Scan using {binary_index_name(collection.model_id)}" in plan, plan
    # Scores are exact cosine similarities, in order, and the halfvec index still exists for the model.
    ids, matrix = store.search.all_vectors(collection)
    hits = store.search.nearest(quantized, query, 10)
    exact = matrix @ (query / np.linalg.norm(query))
    by_id = dict(zip(ids, exact, strict=True))
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in hits:
        assert abs(h.score - by_id[h.image_id]) < 2e-3
    truth = set(np.array(ids)[np.argsort(-exact)[:10]].tolist())
    assert len(truth & {h.image_id for h in hits}) >= 6  # 64 random bits re-ranked from 300 candidates
    assert store.index.valid_hnsw_indexes(collection.model_id) == [hnsw_index_name(collection.model_id)]
    assert [p for p in store.admin.problems() if "perceptual hash" not in p] == []


@pytest.mark.slow
def test_quantize_none_removes_the_binary_index_and_searches_use_halfvec_again(store: Store, database_url: str) -> None:
    collection = fill_synthetic(store, 500, dim=32)
    runner = CliRunner()
    assert runner.invoke(main, ["--database-url", database_url, "db", "reindex", "--quantize", "binary"]).exit_code == 0
    result = runner.invoke(main, ["--database-url", database_url, "db", "reindex", "--quantize", "none"])
    assert result.exit_code == 0, result.output
    back = store.models.get_collection(collection.name)
    assert back is not None and back.rerank is None
    assert store.conn.execute("SELECT to_regclass(%s)", (binary_index_name(collection.model_id),)).fetchone()[0] is None
    plan = store.search.explain_nearest(back, np.ones(32, dtype=np.float32), 10)
    assert "<~>" not in plan and "binary_quantize" not in plan, plan


@pytest.mark.slow
def test_a_halfvec_rebuild_keeps_the_binary_index_apart(store: Store, database_url: str) -> None:
    """The binary index is not taken for the model's halfvec index: a halfvec rebuild and a first-load restore
    still build the halfvec one, and the binary one survives."""
    collection = fill_synthetic(store, 300, dim=32)
    runner = CliRunner()
    assert runner.invoke(main, ["--database-url", database_url, "db", "reindex", "--quantize", "binary"]).exit_code == 0
    store.conn.execute(f"DROP INDEX {hnsw_index_name(collection.model_id)}")
    store.index.restore_hnsw_index(collection.model_id, 32, None)
    assert store.index.valid_hnsw_indexes(collection.model_id) == [hnsw_index_name(collection.model_id)]
    assert runner.invoke(main, ["--database-url", database_url, "db", "reindex", "--m", "8"]).exit_code == 0
    assert store.conn.execute("SELECT to_regclass(%s)", (binary_index_name(collection.model_id),)).fetchone()[0]


def test_quantize_rejects_bad_usage_in_one_line(store: Store, database_url: str) -> None:
    runner = CliRunner()
    for args in (["--quantize", "binary", "--rerank", "0"], ["--quantize", "pq"], ["--hashes", "--quantize", "none"]):
        result = runner.invoke(main, ["--database-url", database_url, "db", "reindex", *args])
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
