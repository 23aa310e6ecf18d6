"""The opt-in int8 mode (IMAGEDB_EMBED_PRECISION=int8): the image tower quantised, recorded in the model's
provenance, and refused for mixing with fp32 vectors in one model's column."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imagedb import embed, int8, provenance
from imagedb.cli import main
from imagedb.embed import PRECISION_ENV, Embedder, ModelSpec
from imagedb.errors import InvalidInput, ModelMismatch
from imagedb.ingest import ingest
from imagedb.store import Store


@pytest.fixture(autouse=True)
def _fresh_embedders(monkeypatch: pytest.MonkeyPatch) -> None:
    # One process has one mode; these tests change it, so each loads its own embedders.
    monkeypatch.setattr(embed, "_loaded", {})


def _count(store: Store) -> int:
    return store.conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]


def test_int8_is_chosen_by_the_variable_on_a_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv(PRECISION_ENV, " INT8 ")
    assert embed.numeric_mode(torch, "cpu") == int8.INT8
    with pytest.raises(InvalidInput, match="runs on a CPU only"):
        embed.numeric_mode(torch, "cuda")


def test_int8_quantises_the_image_tower_within_099_cosine_of_fp32(
    tiny_model: str, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [Image.open(p).convert("RGB") for p in sorted(photos.glob("*.jpg"))]
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    exact = Embedder(ModelSpec.parse(tiny_model))
    monkeypatch.setenv(PRECISION_ENV, "int8")
    quantised = Embedder(ModelSpec.parse(tiny_model))
    assert quantised.numeric_mode == int8.INT8
    assert quantised.provenance()["preprocess"]["numeric_mode"] == int8.INT8
    assert any("quantized" in type(m).__module__ for m in quantised._model.visual.modules())
    a = exact.encode_images([exact.preprocess(i) for i in images])
    b = quantised.encode_images([quantised.preprocess(i) for i in images])
    cosines = np.sum(a * b, axis=1)
    assert cosines.min() >= 0.99, cosines
    assert not np.array_equal(a, b)  # the quantised tower really ran
    # Texts stay fp32: a query embeds the same either way.
    assert np.array_equal(exact.encode_texts(["a cat"]), quantised.encode_texts(["a cat"]))


@pytest.mark.slow
def test_int8_vectors_are_refused_into_an_fp32_model_and_back(
    store: Store,
    database_url: str,
    photos: Path,
    tmp_path: Path,
    tiny_model: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = ModelSpec.parse(tiny_model)
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    ingest(store, [photos], model=spec)
    stored = _count(store)
    more = tmp_path / "more"
    more.mkdir()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(more / "new.jpg")
    monkeypatch.setenv(PRECISION_ENV, "int8")
    monkeypatch.setattr(embed, "_loaded", {})
    with pytest.raises(ModelMismatch, match="int8 vectors would mix") as refused:
        ingest(store, [more], model=spec)
    assert "imagedb models drop" in str(refused.value) and "\n" not in str(refused.value)
    assert _count(store) == stored  # nothing half-stored
    # The CLI says it in one line, exit code 2, no traceback.
    result = CliRunner().invoke(
        main, ["--database-url", database_url, "ingest", str(more), "--model", tiny_model], env={PRECISION_ENV: "int8"}
    )
    assert result.exit_code == 2, result.output
    assert "int8 vectors would mix" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_a_model_without_vectors_takes_the_mode_of_its_first_vectors(
    store: Store, photos: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ModelSpec.parse(tiny_model)
    monkeypatch.setenv(PRECISION_ENV, "int8")
    ingest(store, [photos], model=spec)
    model_id = store.models.model_record(spec.name, spec.pretrained).id  # type: ignore[union-attr]
    assert store.models.numeric_mode(model_id) == int8.INT8
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    monkeypatch.setattr(embed, "_loaded", {})
    extra = photos.parent / "extra"
    extra.mkdir()
    shutil.copy(next(photos.glob("*.jpg")), extra / "copy.jpg")
    Image.new("RGB", (40, 40), (1, 2, 3)).save(extra / "other.jpg")
    with pytest.raises(ModelMismatch, match="holds int8 vectors"):
        ingest(store, [extra], model=spec)
    # Emptied (as `imagedb models drop` in every collection leaves it), the model takes the next mode.
    store.conn.execute("DELETE FROM embeddings WHERE model_id = %s", (model_id,))
    _, embedder = provenance.load_checked(store, spec)
    assert store.models.numeric_mode(model_id) == embedder.numeric_mode != int8.INT8
