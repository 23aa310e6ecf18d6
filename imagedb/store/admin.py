"""Roles, forgetting, integrity checks and server information."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from imagedb.errors import InvalidInput
from imagedb.store.base import Part
from imagedb.store.duplicates import forget_matches
from imagedb.store.index import HNSW_INDEX_PREFIX
from imagedb.store.search import TRUSTED_TEXT_ROW

# What forgetting an image deletes rows from: the image, what cascades from it, and its paths' ingest errors.
# How far from 1 a stored vector's length may be: halfvec rounding moves it by about 0.001.
UNIT_TOLERANCE = 0.01

FORGET_TABLES = (
    "images",
    "embeddings",
    "thumbnails",
    "duplicate_groups",
    "watch_hits",
    "ingest_errors",
    "dicom_images",
    "ingest_claims",  # its rows name paths; released claims leave dead rows and index entries until a VACUUM
    "image_words",
)


class AdminStore(Part):
    def forget(
        self, collection_id: int, refs: Sequence[str], *, full: bool = False, remember: bool = True,
        by_content: bool = False,
    ) -> tuple[list[int], list[str], int | None]:  # fmt: skip
        """Delete images named by id, path or file name, with everything derived from them (foreign keys
        cascade to embeddings, thumbnails, duplicate groups and watch hits; a group member matched through one
        of them leaves its group) and the ingest errors of their
        paths; then VACUUM the tables touched (FULL: rewrite them), so that no live index entry or dead row
        still holds their data. `remember`: ingest leaves their files out from now on (`by_content`: any file of the
        same bytes too; store/exclusions.py). Returns the ids deleted, the tables PostgreSQL would not let this
        role vacuum, and the first transaction id after the deleting one (`full`: no VACUUM is run here)."""
        ids = sorted({i for ref in refs for i in self.store.images.image_ids(collection_id, ref)})
        if not ids:
            return [], [], None
        with self.conn.transaction():
            paths = [r[0] for r in self.conn.execute("SELECT path FROM images WHERE id = ANY(%s)", (ids,))]
            if remember:
                self.store.exclusions.remember_forgotten(collection_id, ids, by_hash=by_content)
            self.conn.execute("DELETE FROM images WHERE id = ANY(%s)", (ids,))
            with self.conn.cursor() as cur:
                forget_matches(cur, ids)
            self.conn.execute("DELETE FROM ingest_errors WHERE path = ANY(%s)", (paths,))
            # A snapshot taken before this transaction committed still sees the deleted rows: VACUUM keeps them. The
            # DELETE gave it its id (pg_current_xact_id, which would take one, is refused to imagedb's roles).
            deleting = int(
                self.conn.execute(
                    "SELECT coalesce(pg_current_xact_id_if_assigned(), pg_snapshot_xmax(pg_current_snapshot()))::text"
                ).fetchone()[0]
            )  # type: ignore[index]
        if full:  # the caller rewrites, after waiting for the snapshots older than `deleting` (roles.py)
            return ids, [], deleting + 1
        return ids, self.vacuum(FORGET_TABLES), deleting + 1

    def older_snapshot(self, horizon: int | None) -> tuple[Any, ...] | None:
        """A session of this database (pid, role, application, seconds in its transaction) whose snapshot or
        transaction is older than transaction id `horizon` (None: the next one to be assigned), so that VACUUM FULL
        would copy rows deleted before it into the new files, else a replica's slot holding as old a snapshot
        (None, slot name, "replica", None); None when there is neither. Writers see every role's sessions too,
        where imagedb's role does (a superuser, or a member of pg_read_all_stats)."""
        row = self.conn.execute(  # migration 0023: it runs as imagedb's role, which sees every session
            "SELECT * FROM imagedb_older_snapshot(%s::text::xid8)",
            (str(self.next_xid() if horizon is None else horizon),),
        ).fetchone()
        return tuple(row) if row else None

    def next_xid(self) -> int:
        """The transaction id the next transaction to write will get: every snapshot open now is older."""
        return int(self.conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()[0])  # type: ignore[index]

    def rewrite_statistics(self, tables: Sequence[str]) -> bool:
        """ANALYZE `tables` (their statistics then hold only live values) and VACUUM FULL pg_statistic, whose old
        file would still hold the values gathered before. False when this role may not rewrite pg_statistic."""
        if tables:  # an empty list would ANALYZE the whole database
            self.conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, tables))))
        return not self.vacuum(["pg_statistic"], full=True)

    def vacuum(self, tables: Sequence[str], *, full: bool = False) -> list[str]:
        """VACUUM (autocommit: it cannot run in a transaction). PostgreSQL skips a table the role may not vacuum
        with a warning, not an error: those tables are returned."""
        skipped: list[str] = []

        def notice(diagnostic: psycopg.errors.Diagnostic) -> None:
            # "permission denied to vacuum "images", skipping it"
            if diagnostic.severity_nonlocalized == "WARNING" and "skipping" in (diagnostic.message_primary or ""):
                skipped.extend(t for t in tables if f'"{t}"' in (diagnostic.message_primary or ""))

        self.conn.add_notice_handler(notice)
        try:
            options = sql.SQL("(FULL) " if full else "")
            self.conn.execute(sql.SQL("VACUUM {}{}").format(options, sql.SQL(", ").join(map(sql.Identifier, tables))))
        finally:
            self.conn.remove_notice_handler(notice)
        return skipped

    def powers_of(self, role: str) -> list[str]:
        """The role attributes (CREATEROLE, CREATEDB, BYPASSRLS) and role memberships `role` has beyond what grant-*
        gives, as they read in SQL."""
        row = self.conn.execute(
            "SELECT r.rolcreaterole, r.rolcreatedb, r.rolbypassrls, array(SELECT b.rolname FROM pg_auth_members m"
            " JOIN pg_roles b ON b.oid = m.roleid WHERE m.member = r.oid ORDER BY 1)"
            " FROM pg_roles r WHERE r.rolname = %s",
            (role,),
        ).fetchone()
        if row is None:
            return []
        attributes = [name for name, has in zip(("CREATEROLE", "CREATEDB", "BYPASSRLS"), row[:3], strict=True) if has]
        return attributes + [f"membership in {member}" for member in row[3]]

    def grant(
        self, role: str, tables: Sequence[str], privileges: str, password: str | None, *, reader: bool = False
    ) -> bool:
        """Give `role` (created with LOGIN when missing) these privileges on these tables and views; `reader`:
        refuse a role that may write (a reader reads the views and nothing else). Returns whether it was created."""
        name = sql.Identifier(role)
        with self.conn.transaction():
            exists = self.conn.execute(
                "SELECT rolsuper OR rolname = current_user, rolreplication FROM pg_roles WHERE rolname = %s", (role,)
            ).fetchone()
            if exists and exists[0]:
                # Granting to the owner would reset its password (locking every command out) and limit nothing.
                raise InvalidInput(
                    f"{role} is a superuser or the role imagedb runs as: give the BI or ingest login another name"
                )
            if exists and exists[1]:
                # A replica's login (`db replica create`): a new password would cut the replica off, and the
                # grants would make `db replica remove` fail to drop it.
                raise InvalidInput(
                    f"{role} has the REPLICATION attribute (a replica's login): give the BI or ingest login another"
                    " name; nothing was changed"
                )
            if exists and reader and (writes := self.writes_of(role)):
                quoted = name.as_string(self.conn)
                raise InvalidInput(
                    f"{role} is a writer (it may change {', '.join(writes[:3])}{', ...' if len(writes) > 3 else ''}):"
                    f" a reader reads the views and nothing else; nothing was changed: drop it first (imagedb db psql:"
                    f" DROP OWNED BY {quoted}; DROP ROLE {quoted}), or give the BI login another name"
                )
            if exists and (extra := self.powers_of(role)):
                # What grant-* prints would be untrue: a "reader" in pg_read_all_data reads every table, one with
                # CREATEROLE makes logins. A BI or ingest login has what grant-* gives and nothing else.
                raise InvalidInput(
                    f"{role} also has {', '.join(extra)}: a BI or ingest login gets what grant-* gives and nothing"
                    " else; nothing was changed: give it another name, or take those away first (imagedb db psql)"
                )
            if not exists:
                self.conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(name))
            if password is not None:
                self.conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(name, sql.Literal(password)))
            # public (the views and functions) and the schema of each table granted (imagedb's own for a writer).
            schemas = self.conn.execute(
                "SELECT DISTINCT c.relnamespace::regnamespace::text FROM unnest(%s::text[]) t, pg_class c"
                " WHERE c.oid = to_regclass(quote_ident(t)) UNION SELECT 'public'",
                (list(tables),),
            ).fetchall()
            self.conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(s) for (s,) in schemas), name
                )
            )
            self.conn.execute(
                sql.SQL("GRANT {} ON {} TO {}").format(
                    sql.SQL(privileges), sql.SQL(", ").join(map(sql.Identifier, tables)), name
                )
            )
        return not exists

    def writes_of(self, role: str) -> list[str]:
        """The tables and views of imagedb this existing role may INSERT, UPDATE or DELETE (a writer's), by name."""
        rows = self.conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_roles r ON r.rolname = %s"
            " WHERE c.relnamespace::regnamespace::text IN ('public', 'imagedb_internal')"
            " AND c.relkind IN ('r', 'v', 'p')"
            " AND (has_table_privilege(r.oid, c.oid, 'INSERT') OR has_table_privilege(r.oid, c.oid, 'UPDATE')"
            " OR has_table_privilege(r.oid, c.oid, 'DELETE')) ORDER BY c.relname",
            (role,),
        ).fetchall()
        return [name for (name,) in rows]

    def grant_maintain(self, role: str, tables: Sequence[str]) -> bool:
        """Let `role` VACUUM these tables (PostgreSQL 17's MAINTAIN privilege); False on older servers."""
        if int(self.conn.execute("SHOW server_version_num").fetchone()[0]) < 170000:  # type: ignore[index]
            return False
        self.conn.execute(
            sql.SQL("GRANT MAINTAIN ON {} TO {}").format(
                sql.SQL(", ").join(map(sql.Identifier, tables)), sql.Identifier(role)
            )
        )
        return True

    def has_password(self, role: str) -> bool:
        """Whether the role can log in with a password (pg_authid is the superuser's; others cannot tell)."""
        try:
            row = self.conn.execute("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s", (role,))
            found = row.fetchone()
        except psycopg.errors.InsufficientPrivilege:
            return True
        return bool(found and found[0])

    def grant_execute(self, role: str, functions: Sequence[str]) -> None:
        """EXECUTE on these functions, given with their argument types (constants of imagedb, never user input)."""
        with self.conn.transaction():
            self.conn.execute(
                sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
                    sql.SQL(", ".join(functions)),  # type: ignore[arg-type]
                    sql.Identifier(role),
                )
            )

    def grant_sequences_and_functions(self, role: str) -> None:
        with self.conn.transaction():
            name = sql.Identifier(role)
            self.conn.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {}").format(name))
            for (schema,) in self.conn.execute("SELECT unnest(current_schemas(false))::text").fetchall():
                self.conn.execute(
                    sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(sql.Identifier(schema), name)
                )

    def problems(self) -> list[str]:
        """What is wrong with the stored data, one line each; empty when all is well."""
        checks = [
            (
                "images without an embedding of their collection's model",
                "SELECT count(*) FROM images i JOIN collections c ON c.id = i.collection_id WHERE NOT EXISTS"
                " (SELECT 1 FROM embeddings e WHERE e.image_id = i.id AND e.model_id = c.model_id)",
            ),
            (
                "embeddings of a model their collection does not hold",
                "SELECT count(*) FROM embeddings e JOIN images i ON i.id = e.image_id WHERE NOT EXISTS"
                " (SELECT 1 FROM collection_models h"
                "  WHERE h.collection_id = i.collection_id AND h.model_id = e.model_id)",
            ),
            (
                "images without a vector of a model added to their collection (run `imagedb models add` again)",
                "SELECT count(*) FROM images i JOIN collection_models h ON h.collection_id = i.collection_id"
                " WHERE h.ready_at IS NOT NULL AND NOT EXISTS"
                " (SELECT 1 FROM embeddings e WHERE e.image_id = i.id AND e.model_id = h.model_id)",
            ),
            (
                "embeddings whose dimension is not their model's",
                "SELECT count(*) FROM embeddings e JOIN embedding_models m ON m.id = e.model_id"
                " WHERE vector_dims(e.embedding) <> m.dim",
            ),
            # embed.py stores vectors of length 1; a writer can store others. One of zero length has no cosine and
            # no Pearson correlation, so searches leave it out; another length skews euclidean and inner scores.
            (
                "embeddings of zero length, which searches leave out (`imagedb forget` those images, then ingest"
                " them again)",
                "SELECT count(*) FROM embeddings WHERE l2_norm(embedding) = 0",
            ),
            (
                "embeddings not of length 1 (changed after ingest), which skew euclidean and inner scores",
                f"SELECT count(*) FROM embeddings WHERE l2_norm(embedding) > 0"
                f" AND abs(l2_norm(embedding) - 1) > {UNIT_TOLERANCE}",
            ),
            (
                "images without a thumbnail",
                "SELECT count(*) FROM images i WHERE NOT EXISTS (SELECT 1 FROM thumbnails t WHERE t.image_id = i.id)",
            ),
            (
                "images without a perceptual hash (run `imagedb db reindex --hashes`)",
                "SELECT count(*) FROM images WHERE dhash IS NULL",
            ),
            (
                "models without their HNSW index (run `imagedb db reindex`)",
                "SELECT count(*) FROM embedding_models m WHERE to_regclass(%s || m.id) IS NULL",
            ),
            (
                "cached query texts not of their model's dimension, not of length 1 or under another text's hash,"
                " which searches ignore (`imagedb db repair` deletes them)",
                "SELECT count(*) FROM text_embeddings t JOIN embedding_models m ON m.id = t.model_id"
                f" WHERE NOT {TRUSTED_TEXT_ROW}",
            ),
        ]
        found = []
        for label, query in checks:
            params = (HNSW_INDEX_PREFIX,) if "%s" in query else ()
            count = self.conn.execute(query, params).fetchone()[0]  # type: ignore[index]
            if count:
                found.append(f"{count} {label}")
        if writers := self.cache_writers():
            found.append(
                f"{len(writers)} role(s) besides the owner may write the text-query cache, which every search"
                f" trusts: {', '.join(writers)} (`imagedb db repair` revokes it)"
            )
        leftovers = self.store.leftovers.indexes()
        if leftovers:
            found.append(
                f"{len(leftovers)} index(es) imagedb does not keep, which every insert still maintains: "
                + ", ".join(x.describe() for x in leftovers)
                + " (`imagedb db repair` removes them)"
            )
        return found

    def cache_writers(self) -> list[str]:
        """Roles other than its owner that may change text_embeddings (PUBLIC included): the cache is the owner's
        alone (migration 0013), a GRANT made by hand since undoes that."""
        rows = self.conn.execute(
            "SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END"
            " FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = 'text_embeddings'::regclass"
            " AND a.grantee <> c.relowner AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'TRIGGER')"
        ).fetchall()
        return sorted(str(r[0]) for r in rows)  # in code-point order, whatever the database's collation

    def revoke_cache_writers(self) -> list[str]:
        """Take every write privilege on the text-query cache from the roles cache_writers() names, and empty the
        cache if there were any: their rows cannot be told from the owner's (as migration 0013 does)."""
        writers = self.cache_writers()
        if writers:
            with self.conn.transaction():
                for role in writers:
                    grantee = sql.SQL("PUBLIC") if role == "PUBLIC" else sql.Identifier(role)
                    self.conn.execute(
                        sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER ON text_embeddings FROM {}").format(
                            grantee
                        )
                    )
                self.conn.execute("DELETE FROM text_embeddings")
        return writers

    def remove_untrusted_texts(self) -> int:
        """Delete the cached query texts that searches ignore (store/search.py TRUSTED_TEXT_ROW); returns how many."""
        cur = self.conn.execute(
            f"DELETE FROM text_embeddings t USING embedding_models m WHERE m.id = t.model_id AND NOT {TRUSTED_TEXT_ROW}"
        )
        return cur.rowcount

    def server_versions(self) -> tuple[str, str]:
        row = self.conn.execute(
            "SELECT current_setting('server_version'), (SELECT extversion FROM pg_extension WHERE extname = 'vector')"
        ).fetchone()
        return row[0], row[1]  # type: ignore[index]

    def collection_stats(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            # Grouped subqueries, not correlated ones, which Citus cannot run on distributed tables
            "SELECT c.name, m.name, m.pretrained, m.dim, coalesce(i.n, 0), coalesce(e.n, 0), coalesce(r.n, 0),"
            " coalesce(f.n, 0)"
            " FROM collections c JOIN embedding_models m ON m.id = c.model_id"
            " LEFT JOIN (SELECT collection_id, count(*) AS n FROM images GROUP BY collection_id) i"
            "  ON i.collection_id = c.id"
            " LEFT JOIN (SELECT i.collection_id, count(*) AS n FROM embeddings e JOIN images i ON i.id = e.image_id"
            "  GROUP BY i.collection_id) e ON e.collection_id = c.id"
            " LEFT JOIN (SELECT u.collection_id, count(*) AS n FROM ingest_errors r JOIN ingest_runs u"
            "  ON u.id = r.run_id GROUP BY u.collection_id) r ON r.collection_id = c.id"
            " LEFT JOIN (SELECT collection_id, count(*) AS n FROM forgotten GROUP BY collection_id) f"
            "  ON f.collection_id = c.id"
            " ORDER BY c.name"
        ).fetchall()
        keys = ("collection", "model", "pretrained", "dim", "images", "embeddings", "errors", "excluded")
        return [dict(zip(keys, r, strict=True)) for r in rows]
