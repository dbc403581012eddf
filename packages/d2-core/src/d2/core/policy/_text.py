"""Text for load-time errors: near-miss suggestions and bounded reprs."""

from __future__ import annotations

__all__ = ["short", "suggest"]


def suggest(word: str, options: tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the closest option, else the list of options."""
    import difflib

    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    lowered = [o for o in options if o.lower() == word.lower()]
    best = lowered or close
    return f" (did you mean {best[0]!r}?)" if best else f" (expected one of: {', '.join(options)})"


def short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, built without expanding deep or
    shared structures (a YAML alias bomb must not turn into a huge message)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict = 2, limit, limit, 4, 4
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
