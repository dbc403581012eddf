"""The version of d2-gateway."""

__version__ = "2.0.0"
