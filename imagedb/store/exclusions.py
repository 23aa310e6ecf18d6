"""What an ingest leaves out: files that failed and have not changed since, and files `imagedb forget` removed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from imagedb.store.base import Part


class ExclusionsStore(Part):
    def failed_states(self, collection_id: int) -> dict[str, tuple[int, datetime]]:
        """path -> (size, mtime) the file had when it last failed in the collection (errors recorded before
        revision "claims" have none, and are retried)."""
        rows = self.conn.execute(
            "SELECT DISTINCT ON (e.path) e.path, e.size_bytes, e.mtime FROM ingest_errors e"
            " JOIN ingest_runs r ON r.id = e.run_id WHERE r.collection_id = %s ORDER BY e.path, e.id DESC",
            (collection_id,),
        ).fetchall()
        return {path: (size, mtime) for path, size, mtime in rows if size is not None and mtime is not None}

    def forgotten(self, collection_id: int) -> tuple[set[str], set[str]]:
        """The paths and the content hashes `imagedb forget` keeps out of the collection."""
        rows = self.conn.execute(
            "SELECT path, sha256 FROM forgotten WHERE collection_id = %s", (collection_id,)
        ).fetchall()
        return {path for path, _ in rows}, {sha for _, sha in rows if sha is not None}

    def remember_forgotten(self, collection_id: int, ids: Sequence[int], *, by_hash: bool) -> None:
        """Record the files of these images (before they are deleted, in the caller's transaction)."""
        self.conn.execute(
            "INSERT INTO forgotten (collection_id, path, sha256)"
            " SELECT DISTINCT ON (split_part(path, '#frame=', 1)) collection_id, split_part(path, '#frame=', 1),"
            " CASE WHEN %s THEN sha256 END FROM images WHERE collection_id = %s AND id = ANY(%s)"
            " ON CONFLICT (collection_id, path) DO UPDATE SET sha256 = COALESCE(excluded.sha256, forgotten.sha256),"
            " forgotten_at = now()",
            (by_hash, collection_id, list(ids)),
        )

    def unforget(self, collection_id: int, refs: Sequence[str] | None) -> list[str]:
        """Let ingest store these again: refs are paths, file names or SHA-256s; None is every one. Returns the
        paths no longer excluded."""
        with self.conn.transaction():
            if refs is None:
                rows = self.conn.execute(
                    "DELETE FROM forgotten WHERE collection_id = %s RETURNING path", (collection_id,)
                ).fetchall()
            else:
                rows = self.conn.execute(
                    "DELETE FROM forgotten WHERE collection_id = %s AND (path = ANY(%s)"
                    " OR regexp_replace(path, '^.*/', '') = ANY(%s) OR sha256 = ANY(%s)) RETURNING path",
                    (collection_id, list(refs), list(refs), list(refs)),
                ).fetchall()
        return sorted(path for (path,) in rows)

    def unforget_paths(self, collection_id: int, paths: Sequence[str]) -> None:
        """Let these exact paths in again (ingest --include-forgotten)."""
        with self.conn.transaction():
            self.conn.execute(
                "DELETE FROM forgotten WHERE collection_id = %s AND path = ANY(%s)", (collection_id, list(paths))
            )

    def excluded_count(self, collection_id: int) -> int:
        row = self.conn.execute("SELECT count(*) FROM forgotten WHERE collection_id = %s", (collection_id,))
        return int(row.fetchone()[0])  # type: ignore[index]

    def remove_files(self, collection_id: int, paths: Sequence[str]) -> int:
        """Delete the images of files (with their DICOM frames) and of folders (everything under them) that left
        a watched folder; nothing is remembered, so they come back if they return. Returns how many went."""
        with self.conn.transaction():
            cur = self.conn.execute(
                "DELETE FROM images i WHERE i.collection_id = %s AND (split_part(i.path, '#frame=', 1) = ANY(%s)"
                " OR EXISTS (SELECT 1 FROM unnest(%s::text[]) AS f(p) WHERE starts_with(i.path, f.p || '/')))",
                (collection_id, list(paths), list(paths)),
            )
        return cur.rowcount
