"""The version of d2-server (kept equal to the repository's VERSION)."""

__all__ = ["__version__"]

__version__ = "2.0.0"
