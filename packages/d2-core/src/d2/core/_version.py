"""The version of every d2-* distribution (kept equal to the repository's VERSION)."""

__version__ = "2.0.0"
