"""The API's routes, one router per resource; app.py puts them under /api behind the token check."""
