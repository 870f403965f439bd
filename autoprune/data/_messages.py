"""Error text for `AutopruneError` messages, which must stay on one line."""

from __future__ import annotations


def one_line(e: BaseException) -> str:
    """The message of `e` with all whitespace, newlines included, collapsed to single spaces."""
    return " ".join(str(e).split()) or type(e).__name__
