"""`imagedb serve`: a JSON API (with its OpenAPI schema) and a single page, from one process.

app.py assembles the application: state.py holds what it keeps while it runs (the database pool, the embedding
slots, the token), deps.py the dependencies through which routes reach it, routes/ one router per resource
(search, images, collections, the page), handlers.py the answers to errors, limits.py the sizes and waits;
guards.py the ASGI middlewares (security headers, access log, Host check, body limit); originals.py serves
original files only while they are the ingested ones; bind.py binds the socket.
"""

from imagedb.api.app import create_app
from imagedb.api.limits import MAX_UPLOAD_BYTES

__all__ = ["MAX_UPLOAD_BYTES", "create_app"]
