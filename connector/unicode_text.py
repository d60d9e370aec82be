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
import unicodedata

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


# Characters that steer a terminal or the direction or lines of text rather than show: C0 and C1
# controls (ESC, CR, LF, BEL, NUL ...), every Bidi_Control character (the marks U+061C, U+200E,
# U+200F, the embeddings and overrides U+202A-U+202E, the isolates U+2066-U+2069) and the line and
# paragraph separators (U+2028, U+2029). In a text an operator's terminal prints (a token's note),
# they could clear the screen, set its title, reorder what is shown or forge lines.
_BIDI = frozenset(chr(c) for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def _steering(char: str) -> bool:
    return char in _BIDI or unicodedata.category(char) in ("Cc", "Zl", "Zp")


def first_control(text: str) -> str | None:
    """``U+001B at 3`` for the first control or direction character of ``text``, None when none."""
    for at, char in enumerate(text, 1):
        if _steering(char):
            return f"U+{ord(char):04X} at {at}"
    return None


def printable(text: str) -> str:
    """``text`` with each control or direction character written as its escape (``\\x1b``,
    ``\\u202e``), for a terminal."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(char.encode("unicode_escape").decode() if _steering(char) else char for char in text)
