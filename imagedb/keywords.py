"""The words around an image for keyword search: the photographer's keywords and captions read from the file, the
DICOM descriptions de-identification keeps, and OCR text; the file name, folders and attributes the database takes
itself (migration 0018's triggers). Called once after an ingest's batches are stored (after_ingest), and by
`imagedb keywords refresh`; OCR runs after the embedding, so it never holds up a batch."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, IptcImagePlugin

from imagedb import ocr
from imagedb.collection import get_collection
from imagedb.files import readable
from imagedb.store import Collection, Store

MAX_CAPTION = 100_000  # characters kept of a file's captions and keywords together (keyword_lexemes reads as many)
PAGE = 500

# EXIF: ImageDescription, and the Windows XP fields (UTF-16LE): XPTitle, XPComment, XPKeywords, XPSubject.
_EXIF_TEXT = (0x010E,)
_EXIF_XP = (0x9C9B, 0x9C9C, 0x9C9E, 0x9C9F)
_USER_COMMENT = 0x9286
# IPTC-IIM: keywords (2:25), caption (2:120), headline (2:105), object name (2:5).
_IPTC = ((2, 25), (2, 120), (2, 105), (2, 5))
# XMP: dc:subject (keywords), dc:description and dc:title (captions, in rdf:Alt), Lightroom's hierarchical keywords.
_XMP_FIELDS = re.compile(
    rb"<(dc:subject|dc:description|dc:title|lr:hierarchicalSubject)\b[^>]*>(.*?)</\1>", re.S | re.I
)
_XMP_ITEM = re.compile(rb"<rdf:li\b[^>]*>(.*?)</rdf:li>", re.S | re.I)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]+")


@dataclass
class WordsSummary:
    captions: int = 0  # images whose captions were read now
    with_caption: int = 0  # of those, images that had any
    ocr_read: int = 0
    ocr_with_text: int = 0
    ocr_failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ocr_seconds: float = 0.0


def captions(path: str | Path) -> str:
    """The keywords and captions a file carries (EXIF, IPTC, XMP), one text; '' for none or an unreadable file
    (the pixels' reader reports that)."""
    parts: list[str] = []
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            for tag in _EXIF_TEXT:
                parts.append(_text(exif.get(tag)))
            for tag in _EXIF_XP:
                value = exif.get(tag)
                if isinstance(value, (bytes, tuple)):
                    parts.append(_text(bytes(value).decode("utf-16-le", "replace")))
            parts.append(_user_comment(exif.get_ifd(0x8769).get(_USER_COMMENT)))
            iptc = IptcImagePlugin.getiptcinfo(image) or {}
            for key in _IPTC:
                value = iptc.get(key)
                for item in value if isinstance(value, list) else [value]:
                    parts.append(_text(item))
            parts.append(_xmp(image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")))
    except Exception:  # broken metadata says nothing about the pixels; words are a bonus
        pass
    return _CONTROL.sub(" ", " ".join(p for p in parts if p))[:MAX_CAPTION]


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.replace("\x00", " ").strip() if isinstance(value, str) else ""


def _user_comment(value: object) -> str:
    # An 8-byte character code, then the text: ASCII, UNICODE (UTF-16, byte order of the file: try both), JIS.
    if not isinstance(value, bytes) or len(value) <= 8:
        return _text(value)
    code, body = value[:8], value[8:]
    if code.startswith(b"UNICODE"):
        little = body.decode("utf-16-le", "replace")
        big = body.decode("utf-16-be", "replace")
        return _text(little if little.count("\ufffd") <= big.count("\ufffd") else big)
    return _text(body)


def _xmp(value: object) -> str:
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    if not isinstance(value, bytes):
        return ""
    out: list[str] = []
    for _, body in _XMP_FIELDS.findall(value[:4_000_000]):
        items = _XMP_ITEM.findall(body) or [body]
        out += [_unescape(i.decode("utf-8", "replace")) for i in items]
    return " ".join(out)


def _unescape(text: str) -> str:
    text = re.sub(r"<[^>]*>", " ", text)
    return (
        text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", '"')
        .replace("&apos;", "'")
        .replace("&amp;", "&")
    )


def read_captions(store: Store, target: Collection) -> WordsSummary:
    """Read the captions of the collection's images never read (the new ones of an ingest)."""
    summary = WordsSummary()
    after = 0
    while rows := store.keywords.missing_captions(target.id, after, PAGE):
        found = {i: captions(path) if fmt != "DICOM" else "" for i, path, fmt in rows}
        dicom = [i for i, _, fmt in rows if fmt == "DICOM"]
        found.update(store.keywords.dicom_descriptions(dicom) if dicom else {})
        store.keywords.set_captions(found)
        summary.captions += len(found)
        summary.with_caption += sum(1 for text in found.values() if text)
        after = rows[-1][0]
    return summary


def read_text(
    store: Store,
    target: Collection,
    summary: WordsSummary,
    *,
    retry: bool = False,
    engine: ocr.Engine | None = None,
    on_image: Callable[[], None] | None = None,
) -> None:
    """OCR every image of the collection not read yet (with `retry`, also those it failed on). An image the engine
    fails on gets its reason recorded (image_words.ocr_reason) and the run goes on."""
    import time

    started = time.perf_counter()
    engine = engine or ocr.Engine()
    after = 0
    while rows := store.keywords.missing_ocr(target.id, after, PAGE, retry):
        for image_id, path in rows:
            try:
                text, reason = engine.read(path), None
            except Exception as exc:
                # One line, at most 500 characters: engines' messages run over several, with their internals.
                reason = " ".join(readable(f"{type(exc).__name__}: {exc}").split())[:500]
                text = None
                summary.ocr_failed.append((path, reason))
            store.keywords.set_ocr(image_id, text, reason)
            summary.ocr_read += 1
            summary.ocr_with_text += bool(text)
            if on_image:
                on_image()
        after = rows[-1][0]
    summary.ocr_seconds += time.perf_counter() - started


def after_ingest(store: Store, target: Collection, *, read_ocr: bool = False) -> WordsSummary:
    """What an ingest does once its batches are stored: captions of the new images, then OCR when asked."""
    summary = read_captions(store, target)
    if read_ocr:
        read_text(store, target, summary)
    return summary


def refresh(store: Store, collection: str, *, read_ocr: bool = False, retry: bool = False) -> WordsSummary:
    """`imagedb keywords refresh`: remake every document of a collection (after a change of how words are cut),
    read captions never read, and OCR with `read_ocr`."""
    if read_ocr:
        ocr.require()  # before any work: one line saying how to turn it on
    target = get_collection(store, collection)
    store.keywords.refresh(target.id)
    summary = read_captions(store, target)
    if read_ocr:
        read_text(store, target, summary, retry=retry)
    return summary
