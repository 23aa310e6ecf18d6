"""Ingests that share the work, failed files remembered with their size and mtime, forgotten files kept out.

- ingest_claims: the files an ingest is decoding and storing right now, one row per (collection, path), naming its
  run. A claim is live while its run holds the session advisory lock (0x1A71, run id): a run that crashes or loses
  its connection loses that lock with its session, and another run takes its claims over.
- ingest_errors.size_bytes, mtime: the file as it was when it failed; an ingest retries it only once it changes.
- forgotten: the SHA-256 of each path `imagedb forget` removed (not the path: forget --full promises that no table
  keeps it readable) and, when asked, of its content, which ingest leaves out until `imagedb unforget`.

Writer roles (those granted INSERT on images) get the same rights on the new tables, and may VACUUM
ingest_claims (which `forget` vacuums) where the server has the MAINTAIN privilege.

Revision ID: claims
Revises: readers
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "claims"
down_revision = "citus"
branch_labels = None
depends_on = None

NEW_TABLES = ("ingest_claims", "forgotten")


def upgrade() -> None:
    op.create_table(
        "ingest_claims",
        sa.Column("collection_id", sa.Integer, sa.ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("ingest_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "forgotten",
        sa.Column("collection_id", sa.Integer, sa.ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("path_sha256", sa.Text, primary_key=True),
        sa.Column("sha256", sa.Text),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("forgotten_sha256_idx", "forgotten", ["collection_id", "sha256"])
    op.add_column("ingest_errors", sa.Column("size_bytes", sa.BigInteger))
    op.add_column("ingest_errors", sa.Column("mtime", sa.DateTime(timezone=True)))
    op.create_index("ingest_errors_path_idx", "ingest_errors", ["path"])
    writers = (
        op.get_bind()
        .exec_driver_sql(
            "SELECT DISTINCT grantee FROM information_schema.role_table_grants WHERE table_schema = current_schema()"
            " AND table_name = 'images' AND privilege_type = 'INSERT' AND grantee NOT IN (current_user, 'PUBLIC')"
        )
        .fetchall()
    )
    maintain = int(op.get_bind().exec_driver_sql("SHOW server_version_num").scalar_one()) >= 170000
    for (role,) in writers:
        quoted = '"' + role.replace('"', '""') + '"'
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(NEW_TABLES)} TO {quoted}")
        if maintain:  # forget vacuums ingest_claims, whose rows name paths
            op.execute(f"GRANT MAINTAIN ON ingest_claims TO {quoted}")


def downgrade() -> None:
    op.drop_index("ingest_errors_path_idx", table_name="ingest_errors")
    op.drop_column("ingest_errors", "mtime")
    op.drop_column("ingest_errors", "size_bytes")
    op.drop_table("forgotten")
    op.drop_table("ingest_claims")
