"""What a long run (ingest, `imagedb models add`) tells its caller as it goes: the library never prints."""

from __future__ import annotations

from typing import Protocol

# The phases of a run, in order, as Progress.phase names them. Scanning counts files found (no total known);
# embedding counts files decoded and stored, out of those new or changed.
SCANNING = "scanning"
LOADING_MODEL = "loading model"
EMBEDDING = "embedding"
BUILDING_INDEX = "building index"
ATTACHING_METADATA = "attaching metadata"


class Progress(Protocol):
    """Told what a run is doing; the library never prints, the caller shows it (a bar, log lines, nothing)."""

    def phase(self, name: str, total: int | None = None, detail: str = "") -> None:
        """A new phase begins; `total` is the count advance() will reach, when known."""

    def advance(self, n: int = 1) -> None:
        """`n` more items of the current phase are done."""


class NoProgress:
    """Shows nothing."""

    def phase(self, name: str, total: int | None = None, detail: str = "") -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass
