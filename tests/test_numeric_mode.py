"""Image vectors in bfloat16 autocast on CPUs with native bfloat16, within 0.999 cosine of fp32's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagedb import embed
from imagedb.embed import BF16_AUTOCAST, FP32, PRECISION_ENV, TF32, Embedder, ModelSpec


def _vectors(tiny_model: str, photos: Path) -> tuple[Embedder, np.ndarray]:
    embedder = Embedder(ModelSpec.parse(tiny_model))
    tensors = [embedder.preprocess(Image.open(p).convert("RGB")) for p in sorted(photos.glob("*.jpg"))]
    return embedder, embedder.encode_images(tensors)


def test_bf16_vectors_stay_within_0999_cosine_of_fp32(
    tiny_model: str, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    native = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    fast, fast_vectors = _vectors(tiny_model, photos)
    assert fast.numeric_mode == (BF16_AUTOCAST if native else FP32)
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    exact, exact_vectors = _vectors(tiny_model, photos)
    assert exact.numeric_mode == FP32
    cosines = np.sum(fast_vectors * exact_vectors, axis=1)
    assert cosines.min() >= 0.999, cosines
    if native:
        assert not np.array_equal(fast_vectors, exact_vectors)  # the autocast really ran


def test_numeric_mode_is_tf32_on_cuda_fp32_elsewhere_and_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert embed.numeric_mode(torch, "cuda") == TF32  # 4.6x fp32 at cosine >= 0.999999 (bench/results)
    assert embed.numeric_mode(torch, "cuda:1") == TF32
    assert embed.numeric_mode(torch, "mps") == FP32
    monkeypatch.setenv(PRECISION_ENV, " FP32 ")
    assert embed.numeric_mode(torch, "cpu") == FP32
    assert embed.numeric_mode(torch, "cuda") == FP32
