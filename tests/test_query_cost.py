"""One query cannot hold the model for long (issue #22, item 3): 300 distinct texts once held it for 162 s, and two
such queries made every other search get 503. A query's texts and images are bounded, refused before anything is
read or embedded, in one line: exit 2 in the CLI, 400 in the API."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from imagedb import embed
from imagedb.api import create_app
from imagedb.cli import main
from imagedb.embed import ModelSpec
from imagedb.errors import InvalidInput
from imagedb.ingest import ingest
from imagedb.request import MAX_IMAGE_TERMS, MAX_TERMS, MAX_TEXT_TERMS, SearchRequest, Term
from imagedb.search import search
from imagedb.store import Store


def _texts(n: int) -> list[str]:
    """n different short words ("aa", "ab", ...): 300 of them joined by + fit the API's 2,000 characters."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [letters[i // 26 % 26] + letters[i % 26] for i in range(n)]


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any use of a model fails the test: a refused query must cost no embedding."""

    def refuse(spec: ModelSpec) -> embed.Embedder:
        raise AssertionError(f"a refused query loaded {spec}")

    monkeypatch.setattr(embed, "load", refuse)


def test_the_library_bounds_texts_images_and_terms() -> None:
    texts = [Term("text", t, 1.0) for t in _texts(MAX_TEXT_TERMS + 1)]
    with pytest.raises(InvalidInput, match=f"{MAX_TEXT_TERMS + 1} different texts, at most {MAX_TEXT_TERMS}"):
        SearchRequest(texts).checked()
    SearchRequest(texts[:MAX_TEXT_TERMS]).checked()
    # A repeated text is embedded once: it costs no more model time.
    SearchRequest([Term("text", "beach", 1.0)] * (MAX_TEXT_TERMS + 5)).checked()
    images = [Term("image", f"/tmp/{i}.jpg", 1.0) for i in range(MAX_IMAGE_TERMS + 1)]
    with pytest.raises(InvalidInput, match=f"{MAX_IMAGE_TERMS + 1} images, at most {MAX_IMAGE_TERMS}"):
        SearchRequest(images).checked()
    ids = [Term("id", str(i), 1.0) for i in range(1, MAX_TERMS + 2)]
    with pytest.raises(InvalidInput, match=f"{MAX_TERMS + 1} terms, at most {MAX_TERMS}"):
        SearchRequest(ids).checked()


def test_the_cli_refuses_too_many_texts_or_images_in_one_line(
    database_url: str, photos: Path, monkeypatch: pytest.MonkeyPatch, no_model: None
) -> None:
    monkeypatch.setenv("IMAGEDB_DATABASE_URL", database_url)
    many_texts = " + ".join(_texts(300)).split(" ")
    files = sorted(photos.glob("*.jpg"))[: MAX_IMAGE_TERMS + 1]
    many_images = " + ".join(str(f) for f in files).split(" ")
    for tokens, words in ((many_texts, "300 different texts"), (many_images, f"{len(files)} images")):
        result = CliRunner().invoke(main, ["search", *tokens], catch_exceptions=False)
        assert result.exit_code == 2, result.output
        # click's usage error: the usage lines, then the reason on one line
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and words in errors[0] and "at most" in errors[0], result.output


def test_the_api_refuses_too_many_texts_with_a_400(database_url: str, no_model: None) -> None:
    client = TestClient(create_app(database_url), base_url="http://localhost")
    query = " + ".join(_texts(300))
    assert len(query) < 2000  # within the API's bound on the query's length
    started = time.perf_counter()
    refused = client.get("/api/search", params={"q": query})
    assert refused.status_code == 400 and "300 different texts" in refused.json()["detail"]
    assert time.perf_counter() - started < 5


def test_texts_are_embedded_in_one_batch(tiny_model: str) -> None:
    """query_vector embeds a query's texts in one call to the model: the same vectors as one at a time."""
    embedder = embed.load(ModelSpec.parse(tiny_model))
    texts = _texts(MAX_TEXT_TERMS)
    batch = embedder.encode_texts(texts)
    single = np.stack([embedder.encode_texts([t])[0] for t in texts])
    assert np.allclose(batch, single, atol=1e-4)


def test_the_text_count_is_what_the_model_embeds(
    store: Store, tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Texts are embedded by their exact spelling, one row each: "Cat" and "cat" are two rows of the batch (a
    case-sensitive tokenizer would give them different vectors), so they count as two; a repeat counts once, as it
    is embedded once. The count refused is the count the model would have been given."""
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "a.png")
    ingest(store, [tmp_path], model=ModelSpec.parse(tiny_model))
    given: list[list[str]] = []
    original = embed.Embedder.encode_texts

    def counted(self: embed.Embedder, texts: Sequence[str]) -> np.ndarray:
        given.append(list(texts))
        return original(self, texts)

    monkeypatch.setattr(embed.Embedder, "encode_texts", counted)
    variants = ["cat", "Cat", "CAT", "cAt", "caT", "CAt", "cAT", "CaT"][:MAX_TEXT_TERMS]
    terms = [Term("text", v, 1.0) for v in variants * 2]  # each twice
    search(store, SearchRequest(terms, limit=1))
    assert [sorted(batch) for batch in given] == [sorted(set(variants))]  # one batch, each spelling once
    with pytest.raises(InvalidInput, match=f"{len(variants) + 1} different texts"):
        search(store, SearchRequest([*terms, Term("text", "cats", 1.0)], limit=1))
    assert len(given) == 1  # refused before the model
