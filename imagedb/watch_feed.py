"""Following the watch list as hits arrive, believing only what the database holds.

Ingest announces each new watch hit on the channel `imagedb_watch` with its id alone (`{"hit_id": 42}`). Any role
that can log in may NOTIFY any channel (PostgreSQL has no privilege for it), so a payload proves nothing: a
follower reads the hit it names from `watch_hits`, which only writers and the owner can write, and reports it once,
only if it was stored after the follower began (an old hit's id sent again is a replay). A forged payload,
malformed JSON, an id that is not stored, is dropped without a word.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from imagedb.store import Store

CHANNEL = "imagedb_watch"
_MAX_NOTIFIES = 10_000  # read at most this many notifications per poll: a flood of forged ones cannot starve it


class WatchFeed:
    """LISTENs on the store's connection (autocommit, so notifications arrive between statements)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.after = store.dupes.last_hit_id()
        self.seen: set[int] = set()
        store.conn.execute(f"LISTEN {CHANNEL}")

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        """The verified hits announced within `timeout` seconds (empty when none came)."""
        ids = set()
        for notice in self.store.conn.notifies(timeout=timeout, stop_after=_MAX_NOTIFIES):
            if notice.channel == CHANNEL and (hit_id := _hit_id(notice.payload)) is not None:
                ids.add(hit_id)
        ids -= self.seen
        if not ids:
            return []
        hits = self.store.dupes.verified_hits(sorted(ids), self.after)
        self.seen.update(int(h["id"]) for h in hits)
        return hits

    def follow(self, timeout: float = 1.0) -> Iterator[dict[str, Any]]:
        while True:
            yield from self.poll(timeout)


def _hit_id(payload: str) -> int | None:
    try:
        value = json.loads(payload).get("hit_id") if len(payload) < 200 else None
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63 else None
