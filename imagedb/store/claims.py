"""Claims: which ingest is decoding and storing which file now, so that ingests of overlapping folders share the
files instead of each embedding all of them.

A run claims a file by a row in ingest_claims naming the run. The row is live while the run holds its session
advisory lock (_CLAIM_LOCK, run id), which PostgreSQL releases when the session ends however it ends: a run
killed, crashed or cut off from the server leaves rows that the next claimer of those paths simply takes over. One
lock per run, not one per file: session locks share the server's lock table (a few thousand entries), and a run
may claim thousands of files at once (--batch-size 4096).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from imagedb.store.base import Part

_CLAIM_LOCK = 0x1A71  # advisory lock class of a run's claims; the second key is the run id

# Which runs hold their lock is read from pg_locks apart from the statements that change ingest_claims, which then
# name the dead runs by id: on Citus, ingest_claims is a reference table whose statements run on every node, where a
# pg_locks subquery would see that node's locks, not the coordinator's that the runs hold (and a DO UPDATE may use
# only immutable functions). A run found dead stays dead: its id is never reused, its lock never taken again.
_LIVE = (
    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid = %s"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND objid::bigint = ANY(%s)"
)


class ClaimsStore(Part):
    def hold_run(self, run_id: int) -> None:
        """Make this session's claims for `run_id` live: for as long as the session lasts, or release_run()."""
        self.conn.execute("SELECT pg_advisory_lock(%s, %s)", (_CLAIM_LOCK, run_id))

    def release_run(self, collection_id: int, run_id: int) -> None:
        with self.conn.transaction():
            self.conn.execute(
                "DELETE FROM ingest_claims WHERE collection_id = %s AND run_id = %s", (collection_id, run_id)
            )
        self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_CLAIM_LOCK, run_id))

    def claim(self, collection_id: int, run_id: int, paths: Sequence[str]) -> set[str]:
        """Claim the paths no live run holds; returns those now this run's (an unclaimed path, or a dead run's)."""
        if not paths:
            return set()
        with self.conn.transaction():
            dead = self._dead_runs(collection_id, paths)
            if dead:  # taken over by deleting them first: Citus 14 loses a parameter in a DO UPDATE's WHERE
                self.conn.execute(
                    "DELETE FROM ingest_claims WHERE collection_id = %s AND path = ANY(%s) AND run_id = ANY(%s)",
                    (collection_id, list(paths), dead),
                )
            rows = self.conn.execute(
                "INSERT INTO ingest_claims AS c (collection_id, path, run_id)"
                " SELECT %s::integer, p, %s::bigint FROM unnest(%s::text[]) AS p ORDER BY p"
                " ON CONFLICT (collection_id, path) DO UPDATE SET claimed_at = excluded.claimed_at"
                " WHERE c.run_id = excluded.run_id"
                " RETURNING path",
                (collection_id, run_id, list(paths)),
            ).fetchall()
        return {path for (path,) in rows}

    def unclaim(self, collection_id: int, run_id: int, paths: Sequence[str]) -> None:
        if paths:
            with self.conn.transaction():
                self.conn.execute(
                    "DELETE FROM ingest_claims WHERE collection_id = %s AND run_id = %s AND path = ANY(%s)",
                    (collection_id, run_id, list(paths)),
                )

    def forget_dead(self, collection_id: int) -> int:
        """Delete the claims of runs that ended without releasing them (killed, or cut off)."""
        with self.conn.transaction():
            dead = self._dead_runs(collection_id, None)
            if not dead:
                return 0
            cur = self.conn.execute(
                "DELETE FROM ingest_claims WHERE collection_id = %s AND run_id = ANY(%s::bigint[])",
                (collection_id, dead),
            )
        return cur.rowcount

    def _dead_runs(self, collection_id: int, paths: Sequence[str] | None) -> list[int]:
        """The runs holding claims in the collection (on these paths, or any) that no longer hold their lock."""
        runs = [
            r
            for (r,) in self.conn.execute(
                "SELECT DISTINCT run_id FROM ingest_claims WHERE collection_id = %s"
                " AND (%s::text[] IS NULL OR path = ANY(%s::text[]))",
                (collection_id, None if paths is None else list(paths), None if paths is None else list(paths)),
            ).fetchall()
        ]
        if not runs:
            return []
        live = {r for (r,) in self.conn.execute(_LIVE, (_CLAIM_LOCK, runs)).fetchall()}
        return [r for r in runs if r not in live]

    def stored_states(self, collection_id: int, paths: Sequence[str]) -> dict[str, tuple[int, datetime]]:
        """path -> (size, mtime) of those of `paths` stored in the collection now (another run may have stored
        them since this one listed what it must do)."""
        rows = self.conn.execute(
            "SELECT path, size_bytes, mtime FROM images WHERE collection_id = %s AND path = ANY(%s)",
            (collection_id, list(paths)),
        ).fetchall()
        return {path: (size, mtime) for path, size, mtime in rows}
