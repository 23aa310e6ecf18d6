"""Distributing imagedb's tables on a Citus coordinator (docs/scaling.md): the image tables by image id, co-located,
the small ones as reference tables copied to every node.

The order matters. `create_reference_table` turns every plain table that has a foreign key to the new reference
table into a "Citus local" table (`citus.enable_local_reference_table_foreign_keys`), and a Citus local table with
an identity column cannot be distributed afterwards: Citus refuses to convert a table with an identity column
("cannot complete operation on a table with identity column"), and `images.id` is one. So the foreign keys between
imagedb's tables are taken off, the tables are placed, and the same keys (their definitions read from the catalog)
are put back, which Citus then creates on every shard. All in one transaction, in Citus's sequential mode (a
foreign key to a reference table cannot be added after parallel work on a distributed table in one transaction).
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from imagedb.config import DEFAULT_EF_SEARCH
from imagedb.errors import InvalidInput
from imagedb.store.base import Part

DISTRIBUTED = "images"  # by id; the tables below by image_id, co-located with it
COLOCATED = (
    "embeddings",
    "thumbnails",
    "duplicate_groups",
    "watch_hits",
    "relevance_samples",
    "dicom_images",
    "image_words",
)
REFERENCE = (
    "embedding_models",
    "collections",
    "collection_models",
    "ingest_runs",
    "ingest_errors",
    "watches",
    "watch_hashes",
    "search_tuning",
    "dicom_secret",
    "text_embeddings",
    "ingest_claims",  # keyed by (collection, path), like ingest_errors; rows live only while a run stores a file
    "forgotten",  # keyed by (collection, path hash): ingest reads all of a collection's rows before it starts
)
TABLES = (DISTRIBUTED, *COLOCATED, *REFERENCE)

# The defaults for this database, on the coordinator and the workers. imagedb's own searches SET LOCAL their values
# in a transaction block, which Citus passes on; the SQL functions (imagedb_nearest, ...) set theirs with
# set_config(), which stays on the coordinator, so on the workers they search with these (the functions' own default
# ef_search).
WORKER_DEFAULTS = {"hnsw.ef_search": str(DEFAULT_EF_SEARCH), "hnsw.iterative_scan": "relaxed_order"}


@dataclass(frozen=True)
class Placement:
    table: str
    kind: str  # 'distributed', 'reference' or 'local'
    shards: int


class CitusStore(Part):
    _distributed: bool | None = None

    def version(self) -> str | None:
        """The Citus extension's version in this database, None without it."""
        row = self.conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'citus'").fetchone()
        return row[0] if row else None

    def distributed(self) -> bool:
        """Whether `images` is a distributed table here (asked once per store: distributing is a one-time step)."""
        if self._distributed is None:
            self._distributed = self.version() is not None and bool(
                self.conn.execute(
                    "SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass('images')"
                ).fetchone()
            )
        return self._distributed

    def placements(self) -> list[Placement]:
        """Where each of imagedb's tables is: distributed (with its shard count), reference, or local."""
        if self.version() is None:
            return [Placement(t, "local", 0) for t in TABLES]
        rows = self.conn.execute(
            "SELECT t, CASE p.partmethod WHEN 'h' THEN 'distributed' WHEN 'n' THEN 'reference' ELSE 'local' END,"
            " (SELECT count(*) FROM pg_dist_shard s WHERE s.logicalrelid = p.logicalrelid)"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, n)"
            " LEFT JOIN pg_dist_partition p ON p.logicalrelid = to_regclass(t) ORDER BY u.n",
            (list(TABLES),),
        ).fetchall()
        return [Placement(t, kind, int(n)) for t, kind, n in rows]

    def distribute(self, shard_count: int | None = None) -> list[Placement]:
        """Distribute the schema; nothing changes when it already is. Refused, with nothing changed, on a server
        without Citus or a schema older than migration 0016."""
        if self.version() is None:
            raise InvalidInput("this database has no Citus extension: connect to a Citus coordinator")
        if shard_count is not None and not 1 <= shard_count <= 1024:
            raise InvalidInput("--shards must be between 1 and 1024")
        kinds = {p.table: p.kind for p in self.placements()}
        if all(kinds[t] == "distributed" for t in (DISTRIBUTED, *COLOCATED)) and all(
            kinds[t] == "reference" for t in REFERENCE
        ):
            return self.placements()
        if any(kind != "local" for kind in kinds.values()):
            raise InvalidInput("imagedb's tables are partly distributed already: undo that by hand first")
        with self.conn.transaction():
            old = self.conn.execute(
                "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass('images')"
                " AND conname = 'images_collection_id_path_key'"
            ).fetchone()
            if old:
                raise InvalidInput("the schema predates Citus support: run `imagedb db upgrade` first")
            self.conn.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
            # images has triggers that keep image_words (migration 0018), which Citus refuses to distribute without
            # this. They are safe here: image_words is co-located with images by image id, so a trigger firing on
            # a shard of images writes the same worker's shard of image_words. Only distributing (and creating or
            # altering a trigger later) needs it; the triggers fire on the workers without it.
            self.conn.execute("SET LOCAL citus.enable_unsafe_triggers = on")
            keys = self.conn.execute(
                "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
                " WHERE c.contype = 'f' AND c.conrelid = ANY(SELECT to_regclass(t) FROM unnest(%s::text[]) AS t)"
                " ORDER BY c.conrelid, c.conname",
                (list(TABLES),),
            ).fetchall()
            for table, name, _ in keys:
                self.conn.execute(
                    sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.SQL(table), sql.Identifier(name))
                )
            for table in REFERENCE:
                self.conn.execute("SELECT create_reference_table(%s)", (table,))
            if shard_count is None:
                self.conn.execute("SELECT create_distributed_table(%s, 'id')", (DISTRIBUTED,))
            else:
                self.conn.execute(
                    "SELECT create_distributed_table(%s, 'id', shard_count => %s)", (DISTRIBUTED, shard_count)
                )
            for table in COLOCATED:
                self.conn.execute(
                    "SELECT create_distributed_table(%s, 'image_id', colocate_with => %s)", (table, DISTRIBUTED)
                )
            for name, value in WORKER_DEFAULTS.items():
                # Citus passes ALTER DATABASE ... SET on to the workers (it refuses it run on a worker)
                self.conn.execute(
                    sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                        sql.Identifier(self.conn.info.dbname), sql.SQL(name), sql.Literal(value)
                    )
                )
            for table, name, definition in keys:
                # The definition is the server's own text (pg_get_constraintdef), the table name its regclass text
                self.conn.execute(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                        sql.SQL(table), sql.Identifier(name), sql.SQL(definition)
                    )
                )
        self._distributed = True
        return self.placements()
