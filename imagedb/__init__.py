"""imagedb: an image search database on PostgreSQL + pgvector.

Importing the package stays cheap: torch and open_clip load only when an image or text is embedded.
"""

__version__ = "0.1.0"
