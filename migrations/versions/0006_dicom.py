"""DICOM: the kept header fields of DICOM images, the key of their UID hashes, the dicom_catalog view for BI,
and collections created with --keep-phi.

dicom_secret holds the key of the keyed hash (HMAC-SHA256) that replaces every DICOM UID: studies and series still
group, and nobody who lacks the key can tell whether a UID they know is in the database. Only its owner reads it:
writers hash through imagedb_uid_hash(), a SECURITY DEFINER function they may execute (grant-writer), readers may not.

Revision ID: dicom
Revises: relevance
Create Date: 2026-11-28
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "dicom"
down_revision = "relevance"
branch_labels = None
depends_on = None

_BLOCK = 64  # SHA-256's block size: HMAC pads the key to it


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE collections ADD COLUMN keep_phi boolean NOT NULL DEFAULT false;

        CREATE TABLE dicom_images (
            image_id bigint PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,
            modality text,
            body_part text,
            study_uid_hash text,
            series_uid_hash text,
            instance_uid_hash text,
            study_year integer,
            study_date date,
            frame integer NOT NULL DEFAULT 1,
            frames integer NOT NULL DEFAULT 1,
            header jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE INDEX dicom_images_series_idx ON dicom_images (series_uid_hash);

        CREATE TABLE dicom_secret (
            id boolean PRIMARY KEY DEFAULT true CHECK (id),
            inner_pad bytea NOT NULL,
            outer_pad bytea NOT NULL
        );
        REVOKE ALL ON dicom_secret FROM PUBLIC;
        """
    )
    # HMAC's two padded keys, from a key made here (the operating system's randomness), never shown anywhere.
    key = secrets.token_bytes(32).ljust(_BLOCK, b"\x00")
    op.get_bind().execute(
        sa.text("INSERT INTO dicom_secret (inner_pad, outer_pad) VALUES (:inner, :outer)"),
        {"inner": bytes(b ^ 0x36 for b in key), "outer": bytes(b ^ 0x5C for b in key)},
    )
    op.execute(
        """
        -- HMAC-SHA256 of a UID (RFC 2104, from the built-in sha256()), 32 hex digits; NULL for NULL.
        CREATE FUNCTION imagedb_uid_hash(uid text) RETURNS text
        LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, public AS $$
            SELECT left(encode(sha256(s.outer_pad || sha256(s.inner_pad || convert_to(uid, 'UTF8'))), 'hex'), 32)
            FROM dicom_secret s
        $$;
        REVOKE ALL ON FUNCTION imagedb_uid_hash(text) FROM PUBLIC;

        -- One row per DICOM image for BI tools: no path, no header, hashed UIDs that group series and studies.
        CREATE VIEW dicom_catalog AS
        SELECT d.image_id,
               c.name AS collection,
               d.modality,
               d.body_part,
               d.study_year,
               d.study_uid_hash AS study,
               d.series_uid_hash AS series,
               d.frame,
               d.frames,
               i.width,
               i.height,
               i.camera_make AS manufacturer,
               i.camera_model AS model,
               count(*) OVER (PARTITION BY i.collection_id, d.series_uid_hash) AS series_images,
               count(*) OVER (PARTITION BY i.collection_id, d.study_uid_hash) AS study_images
        FROM dicom_images d
        JOIN images i ON i.id = d.image_id
        JOIN collections c ON c.id = i.collection_id;
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP VIEW dicom_catalog; DROP FUNCTION imagedb_uid_hash(text); DROP TABLE dicom_secret, dicom_images;"
        " ALTER TABLE collections DROP COLUMN keep_phi"
    )
