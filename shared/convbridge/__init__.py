"""convbridge: bridge cloud storage to file-conversion APIs with per-file scoped credentials."""

__version__ = "0.1.0"
