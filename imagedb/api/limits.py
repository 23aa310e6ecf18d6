"""How much the API reads and waits: request bodies, ids, and the database pool."""

from __future__ import annotations

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_FORM_OVERHEAD = 64 * 1024  # multipart boundaries, headers and the q field around the file
MAX_OTHER_BODY = 64 * 1024  # no other route reads a body
SHOWN_INPUT_CHARS = 100  # of a rejected value, in a 422 answer
POOL_TIMEOUT_S = 3.0  # how long a request waits for a database connection before a 503
RETRY_AFTER_S = "5"


def upload_limit(path: str) -> tuple[int, str]:
    """The most bytes a request to `path` may send, and the message of a 413 for more."""
    if path == "/api/search/image":
        return MAX_UPLOAD_BYTES + MAX_FORM_OVERHEAD, f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MB"
    return MAX_OTHER_BODY, f"a request body here is at most {MAX_OTHER_BODY // 1024} KB"
