"""`imagedb dupes` and the watch list: near-duplicates by perceptual hash and by CLIP, found in the database.

Candidate pairs come from index-backed nearest-neighbour queries (one SQL statement per rule); groups are the
connected components of those pairs. Nothing compares all pairs.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from imagedb.collection import get_collection
from imagedb.config import (
    DEFAULT_COLLECTION,
    DEFAULT_MAX_HASH_DISTANCE,
    DEFAULT_MIN_CLIP_SIMILARITY,
    DEFAULT_WATCH_MAX_DISTANCE,
)
from imagedb.errors import InvalidInput
from imagedb.files import BadImage
from imagedb.images import decode
from imagedb.store import Store
from imagedb.thumbnails import make_thumbnail, perceptual_hash

Method = Literal["hash", "clip", "both"]
METHODS: tuple[str, ...] = ("hash", "clip", "both")
NEIGHBOURS = 10  # candidates per image per rule; chains link larger groups
_RULE_ORDER = {"sha256": 0, "hash": 1, "clip": 2}
# Every flip and quarter turn of a square: the dihedral group of eight.
_VARIANTS: tuple[Image.Transpose | None, ...] = (
    None,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


@dataclass(frozen=True)
class Member:
    """One image of a group, and how it joined it. Its rule (the `rule` column of duplicate_groups, as
    docs/duplicates.md lists them): "first", the group's first image (smallest id), to which the others are linked,
    directly or in a chain; "sha256", the same bytes as the image it links to (identical files are grouped whatever
    the method); "hash", its perceptual hash differs from the linked image's in at most --max-distance of 64 bits;
    "clip", its CLIP embedding has at least --min-similarity cosine similarity with the linked image's."""

    image_id: int
    path: str
    matched_image_id: int | None  # the member it was linked through; None for the group's first image
    rule: str  # first, sha256, hash or clip
    distance: float | None  # Hamming bits for hash, cosine distance for clip, 0 for sha256

    @property
    def bits(self) -> int | None:
        """For a hash link: how many of the 64 hash bits differ."""
        return int(self.distance) if self.rule == "hash" and self.distance is not None else None

    @property
    def similarity(self) -> float | None:
        """For a CLIP link: the cosine similarity, rounded to 4 decimals (never printed in scientific notation)."""
        if self.rule != "clip" or self.distance is None:
            return None
        return round(1.0 - self.distance, 4) + 0.0  # + 0.0: no "-0.0"

    def describe(self) -> str:
        """How it joined its group, in the words of the options: bits for the hash, similarity for CLIP."""
        if self.matched_image_id is None:
            return "first"
        if self.rule == "sha256":
            return f"sha256: same file as {self.matched_image_id}"
        if self.rule == "hash":
            return f"hash: {self.bits} of 64 bits differ from {self.matched_image_id}"
        return f"clip: similarity {self.similarity:.4f} to {self.matched_image_id}"


@dataclass(frozen=True)
class DuplicateGroup:
    number: int
    members: list[Member]


def check_thresholds(method: str, max_distance: int, min_similarity: float) -> None:
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if not 0 <= max_distance <= 64:
        raise InvalidInput(f"max distance is a number of differing hash bits, 0 to 64, not {max_distance}")
    if not -1 <= min_similarity <= 1:
        raise InvalidInput(f"min similarity is a cosine similarity, -1 to 1, not {min_similarity}")


def find_duplicates(
    store: Store,
    *,
    collection: str = DEFAULT_COLLECTION,
    method: Method = "hash",
    max_distance: int = DEFAULT_MAX_HASH_DISTANCE,
    min_similarity: float = DEFAULT_MIN_CLIP_SIMILARITY,
) -> list[DuplicateGroup]:
    """Groups of near-duplicate images, saved to duplicate_groups (replacing the collection's previous result).

    Identical files (same SHA-256) always form one group, whatever the method.
    """
    check_thresholds(method, max_distance, min_similarity)
    target = get_collection(store, collection)
    edges = [(a, b, d, "sha256") for a, b, d in store.dupes.sha256_edges(target.id)]
    if method in ("hash", "both"):
        edges += [(a, b, d, "hash") for a, b, d in store.dupes.hash_edges(target.id, max_distance, NEIGHBOURS)]
    if method in ("clip", "both"):
        edges += [(a, b, d, "clip") for a, b, d in store.dupes.clip_edges(target, 1.0 - min_similarity, NEIGHBOURS)]
    groups = _components(edges)
    paths = store.dupes.paths(m for group in groups for m, *_ in group)
    result = [
        DuplicateGroup(n, [Member(i, paths[i], matched, rule, dist) for i, matched, rule, dist in group])
        for n, group in enumerate(groups, start=1)
    ]
    store.dupes.save_duplicate_groups(
        target.id,
        [(g.number, m.image_id, m.matched_image_id, m.rule, m.distance) for g in result for m in g.members],
    )
    return result


def _components(
    edges: list[tuple[int, int, float, str]],
) -> list[list[tuple[int, int | None, str, float | None]]]:
    """Connected components, each as a tree from its smallest id: (image, linked through, rule, distance)."""
    adjacent: dict[int, list[tuple[int, float, str]]] = defaultdict(list)
    for a, b, distance, rule in sorted(edges, key=lambda e: (_RULE_ORDER[e[3]], e[2])):
        adjacent[a].append((b, distance, rule))
        adjacent[b].append((a, distance, rule))
    seen: set[int] = set()
    groups = []
    for root in sorted(adjacent):
        if root in seen:
            continue
        seen.add(root)
        group: list[tuple[int, int | None, str, float | None]] = [(root, None, "first", None)]
        queue = deque([root])
        while queue:  # breadth first, best rule first: each member keeps the strongest link that reached it
            node = queue.popleft()
            for other, distance, rule in adjacent[node]:
                if other not in seen:
                    seen.add(other)
                    group.append((other, node, rule, distance))
                    queue.append(other)
        groups.append(sorted(group))
    return groups


def watch_hashes(path: Path) -> tuple[str, list[str]]:
    """SHA-256 and the perceptual hashes of an image in all eight orientations; InvalidInput if not an image."""
    try:
        decoded = decode(path)
    except BadImage as exc:
        raise InvalidInput(f"cannot watch {path}: {exc}") from exc
    hashes = []
    for variant in _VARIANTS:
        turned = decoded.pixels if variant is None else decoded.pixels.transpose(variant)
        hashes.append(perceptual_hash(make_thumbnail(turned)[0]))
    return decoded.record.sha256, hashes


@dataclass(frozen=True)
class Watched:
    watch_id: int
    path: str
    stored_hits: int  # images already stored that look like it, recorded as hits when it was added


def add_watches(
    store: Store, paths: list[Path], label: str | None = None, max_distance: int = DEFAULT_WATCH_MAX_DISTANCE
) -> list[Watched]:
    """Put images on the watch list; the images already stored are checked now, later ingests as they store."""
    check_thresholds("hash", max_distance, 0.0)
    prepared = []
    for path in paths:  # all are checked before any is stored
        if path.is_dir():
            raise InvalidInput(f"cannot watch {path}: it is a folder: name its image files (FOLDER/*.jpg)")
        if path.exists() and not path.is_file():
            raise InvalidInput(f"cannot watch {path}: it is not a regular file: name an image file")
        if not path.is_file():
            raise InvalidInput(f"cannot watch {path}: no such file")
        prepared.append((path, *watch_hashes(path)))
    watched = []
    for path, sha, hashes in prepared:
        watch_id, hits = store.dupes.add_watch(label, str(path.resolve()), sha, max_distance, hashes)
        watched.append(Watched(watch_id, str(path.resolve()), hits))
    return watched


def backfill_hashes(store: Store, batch_size: int = 500) -> int:
    """Perceptual hashes for images stored before they existed, from the stored thumbnails (no files, no model)."""
    done = 0
    while batch := store.dupes.missing_hashes(batch_size):
        store.dupes.set_hashes([(image_id, perceptual_hash(jpeg)) for image_id, jpeg in batch])
        done += len(batch)
    return done
