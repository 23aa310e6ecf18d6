"""How the command line shows text it does not control (file names, messages) and dates.

A file name may hold any byte but `/` and NUL: a newline in it would split one path into two lines for `xargs`,
and terminal escape codes or bidirectional overrides would rewrite what the user sees. Every path the CLI prints
goes through `escape`, which is reversible and documented in docs/search.md:

    \\      a backslash
    \\n \\t \\r   newline, tab, carriage return
    \\xNN   any other control byte (C0, DEL), and a byte that is not valid UTF-8 (kept by Python as a surrogate)
    \\uNNNN C1 controls, Unicode line/paragraph separators and bidirectional controls
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

_NAMED = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_CONTROLS = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
# Lone surrogates U+DC80..U+DCFF are how os.fsdecode keeps bytes that are not UTF-8 (surrogateescape).
_UNSAFE = re.compile(f"[\\\\{_CONTROLS}\udc80-\udcff]")
_UNSAFE_IN_MESSAGE = re.compile(f"[{_CONTROLS}\udc80-\udcff]")


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` on one line of printable characters, backslash-escaped as the module docstring says."""
    return _UNSAFE.sub(_escaped, text)


def one_line(message: str) -> str:
    """A message with its control characters escaped; backslashes stay, since nothing parses a message."""
    return _UNSAFE_IN_MESSAGE.sub(_escaped, message.strip())


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, as the HTTP API writes dates. A naive time counts as UTC: that is how
    imagedb stores file times, and how its date filters compare EXIF times, which carry no zone."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
