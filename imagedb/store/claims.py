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

# A claim whose run no longer holds its lock (`{claim}` names the claim's row). pg_locks shows every session's locks
# to every role.
_DEAD = (
    "NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted"
    f" AND l.classid = {_CLAIM_LOCK} AND l.objid::bigint = {{claim}}.run_id"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
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
            rows = self.conn.execute(
                "INSERT INTO ingest_claims AS c (collection_id, path, run_id)"
                " SELECT %s, p, %s FROM unnest(%s::text[]) AS p ORDER BY p"
                " ON CONFLICT (collection_id, path) DO UPDATE SET run_id = excluded.run_id, claimed_at = now()"
                f" WHERE c.run_id = excluded.run_id OR {_DEAD.format(claim='c')}"
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
            cur = self.conn.execute(
                f"DELETE FROM ingest_claims WHERE collection_id = %s AND {_DEAD.format(claim='ingest_claims')}",
                (collection_id,),
            )
        return cur.rowcount

    def stored_states(self, collection_id: int, paths: Sequence[str]) -> dict[str, tuple[int, datetime]]:
        """path -> (size, mtime) of those of `paths` stored in the collection now (another run may have stored
        them since this one listed what it must do)."""
        rows = self.conn.execute(
            "SELECT path, size_bytes, mtime FROM images WHERE collection_id = %s AND path = ANY(%s)",
            (collection_id, list(paths)),
        ).fetchall()
        return {path: (size, mtime) for path, size, mtime in rows}
