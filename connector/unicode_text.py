"""Strings that are not valid Unicode: lone surrogates.

JSON may write a character as ``\\uXXXX``, and a code point from U+D800 to U+DFFF only makes sense
as one half of a pair standing for a character above U+FFFF. A lone half decodes to a Python string
that cannot be written as UTF-8 (nor stored, logged or shown); so do the bytes of a command-line
argument that are not UTF-8. Such text is refused where it comes in (:func:`first_byte_not_text`;
request bodies by :func:`connector.ingest.receivers.base.parse_json`), and readers of values stored
before show them with each one replaced by U+FFFD (:func:`replaced`).
"""

from __future__ import annotations

import re

LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def replaced(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD."""
    return text if text.isascii() else LONE_SURROGATE.sub("\ufffd", text)


def first_byte_not_text(text: str) -> int | None:
    """Where, counted in bytes from 1, the first lone surrogate of ``text`` stands (what precedes it
    is text); None when there is none."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return len(text[: err.start].encode("utf-8")) + 1
    return None
