"""OCR: the text printed in an image, read by RapidOCR (PP-OCRv4 detection and recognition, Chinese and English;
the ONNX models ship inside the `rapidocr_onnxruntime` wheel, so nothing is downloaded). Optional: the `ocr` extra.
No SQL here; imagedb.keywords stores what it reads."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from imagedb.errors import InvalidInput

HOW_TO_ENABLE = "OCR is off: install it with  pip install 'imagedb[ocr]'  (rapidocr_onnxruntime)"
# Text this small in a bigger picture is unreadable anyway; the detector's cost grows with the pixels.
MAX_SIDE = 2048
# A smaller picture is read enlarged (at most 3x): the recogniser drops the spaces between small English words
# ("ticketcoffeemenu" from 18-pixel text, "ticket coffee menu" at twice the size; bench/ocr_bench.py).
MIN_SIDE = 1280
MIN_CONFIDENCE = 0.5  # recognised lines below this are mostly noise (measured: bench/ocr_bench.py)


def available() -> bool:
    return importlib.util.find_spec("rapidocr_onnxruntime") is not None


def require() -> None:
    """Raises InvalidInput (one line: how to turn it on) when the engine is not installed."""
    if not available():
        raise InvalidInput(HOW_TO_ENABLE)


class Engine:
    """One loaded RapidOCR; read() is serialised (the ONNX sessions are shared)."""

    def __init__(self) -> None:
        require()
        from rapidocr_onnxruntime import RapidOCR

        self._engine: Any = RapidOCR()
        self._lock = threading.Lock()

    def read(self, path: str | Path) -> str:
        """The lines of text read in the image, top to bottom, one per line ('' for none). Raises whatever the
        file or the engine raises: the caller records it for that image."""
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        image.thumbnail((MAX_SIDE, MAX_SIDE))
        if max(image.size) < MIN_SIDE:
            scale = min(3.0, MIN_SIDE / max(image.size))
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        with self._lock:
            # No angle classifier: text upside down is rare in photos and screenshots, and it costs a third pass.
            result, _ = self._engine(image, use_cls=False)
        lines = [(box, text, float(conf)) for box, text, conf in (result or []) if float(conf) >= MIN_CONFIDENCE]
        # Reading order: lines by their middle (to 16 pixels), then left to right.
        lines.sort(key=lambda line: (round(sum(p[1] for p in line[0]) / len(line[0]) / 16), min(p[0] for p in line[0])))
        return "\n".join(text for _, text, _ in lines)
