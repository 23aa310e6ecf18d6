"""The measures a search ranks and scores by, as SQL over the HNSW index's expression.

Every model has one index, on cosine distance (store/index.py). imagedb stores L2-normalised vectors (embed.py
normalises every one), and for unit vectors the Euclidean distance is sqrt(2 - 2 cos) and the inner product is the
cosine: both rank exactly as the cosine does, so the index answers them, and their scores are computed exactly on
the rows it returns (`<->`, `<#>`: the same numbers as the measure computed on the stored vectors). Pearson
correlation is the cosine of the mean-centred vectors, which ranks differently: the index gives candidates, ranked
by their exact Pearson correlation (pearson_pool); an image whose Pearson rank lies far above its cosine rank can be
missed, as bench/results/metric_100000.txt measures.

Each measure is a rank key, lower first (the column `distance` of the search statement), and a score made from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pgvector import HalfVector
from psycopg import sql

from imagedb.errors import InvalidInput
from imagedb.request import MAX_EF_SEARCH

# The rank key of each measure, lower first, on the vector expression {v} and the query %(q)s.
_KEYS = {
    "cosine": "{v} <=> %(q)s",  # cosine distance, 1 - cos: the index's own order
    "euclidean": "{v} <-> %(q)s",
    "inner": "{v} <#> %(q)s",  # pgvector's <#> is the negative inner product
    # -pearson(x, q) = -(x.q - sx sq / n) / sqrt((|x|^2 - sx^2 / n) (|q|^2 - sq^2 / n)), sx = sum(x) = -(x <#> ones).
    # The query's terms come as parameters (pearson_params); a constant stored vector has none (NULL, left out).
    "pearson": "(({v} <#> %(q)s) - ({v} <#> %(ones)s) * %(q_mean)s)"
    " / NULLIF(sqrt(greatest(l2_norm({v}) ^ 2 - ({v} <#> %(ones)s) ^ 2 / %(dim)s, 0) * %(q_var)s), 0)",
}
# The score from the rank key `distance`, as the results show it.
_SCORES = {"cosine": "1 - {}", "euclidean": "{}", "inner": "-{}", "pearson": "-{}"}

# Pearson ranks this many times the rows asked for (at least ef_search), taken from the cosine index.
PEARSON_FACTOR = 10
# At most what an iterative index scan reads (store/search.py MAX_SCAN_TUPLES).
PEARSON_MAX_POOL = 100_000


def key(metric: str, vector: sql.Composable) -> sql.Composed:
    """The measure's rank key (lower is better) for the vector expression `vector`."""
    return sql.SQL(_KEYS[metric]).format(v=vector)


def score(metric: str, distance: sql.Composable) -> sql.Composed:
    """The measure's score from its rank key."""
    return sql.SQL(_SCORES[metric]).format(distance)


def params(metric: str, query: np.ndarray) -> dict[str, Any]:
    """The parameters key() needs besides %(q)s."""
    return pearson_params(query) if metric == "pearson" else {}


def pearson_params(query: np.ndarray) -> dict[str, Any]:
    """The query's mean and centred squared length, from the query as the database holds it (halfvec)."""
    q = np.asarray(query, dtype=np.float16).astype(np.float64)
    dim = len(q)
    mean = float(q.sum()) / dim
    variance = float(q @ q) - dim * mean * mean  # n times the variance: the centred vector's squared length
    if variance <= 1e-6 * float(q @ q):  # zero but for rounding: every component the same
        raise InvalidInput("the query vector is constant: its Pearson correlation with any image is undefined")
    return {"ones": HalfVector(np.ones(dim, dtype=np.float32)), "q_mean": mean, "q_var": variance, "dim": dim}


def pearson_pool(wanted: int, ef_search: int | None) -> int:
    """How many cosine candidates Pearson re-ranks to give `wanted` rows: ten times as many, at least ef_search
    (what a plain index scan reads anyway), at most what an iterative scan reads."""
    return max(wanted, min(max(wanted * PEARSON_FACTOR, min(ef_search or 0, MAX_EF_SEARCH)), PEARSON_MAX_POOL))
