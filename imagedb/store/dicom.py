"""DICOM images: their kept header fields, written with the batch that stores the images (see images.py)."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from imagedb.store.records import ImageRecord


def insert_dicom_rows(cur: psycopg.Cursor, ids: Sequence[int], records: Sequence[ImageRecord]) -> None:
    """The dicom_images rows of the DICOM records just inserted as `ids`; UIDs are hashed by the database
    (imagedb_uid_hash, keyed by a secret this role cannot read), so no raw UID is ever written."""
    rows = [(image_id, r.dicom) for image_id, r in zip(ids, records, strict=True) if r.dicom is not None]
    if not rows:
        return
    cur.executemany(
        "INSERT INTO dicom_images (image_id, modality, body_part, study_uid_hash, series_uid_hash,"
        " instance_uid_hash, study_year, study_date, frame, frames, header)"
        " VALUES (%s, %s, %s, imagedb_uid_hash(%s), imagedb_uid_hash(%s), imagedb_uid_hash(%s),"
        " %s, %s, %s, %s, %s)",
        [
            (
                image_id,
                d.modality,
                d.body_part,
                d.study_uid,
                d.series_uid,
                d.instance_uid,
                d.study_year,
                d.study_date,
                d.frame,
                d.frames,
                Jsonb(d.header),
            )
            for image_id, d in rows
        ],
    )
