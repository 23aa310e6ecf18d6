"""`imagedb serve`: a JSON API (with its OpenAPI schema) and a single page, from one process.

app.py holds the routes; guards.py the ASGI middlewares (security headers, access log, Host check, body limit);
originals.py serves original files only while they are the ingested ones; listen.py binds the socket.
"""

from imagedb.api.app import MAX_UPLOAD_BYTES, create_app

__all__ = ["MAX_UPLOAD_BYTES", "create_app"]
