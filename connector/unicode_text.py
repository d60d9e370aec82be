"""Strings that are not valid Unicode: lone surrogates.

JSON may write a character as ``\\uXXXX``, and a code point from U+D800 to U+DFFF only makes sense
as one half of a pair standing for a character above U+FFFF. A lone half decodes to a Python string
that cannot be written as UTF-8 (nor stored, logged or shown). The admin API refuses bodies holding
one (:func:`first_in`); readers of values stored before show them with each one replaced by U+FFFD
(:func:`replaced`).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

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


def _found(text: str) -> str | None:
    if text.isascii():
        return None
    match = LONE_SURROGATE.search(text)
    return f"\\u{ord(match.group()):04x}" if match else None


def first_in(value: Any) -> tuple[str, str] | None:
    """A lone surrogate in a parsed JSON value (the outermost first): where it is (``note``,
    ``items[2].name``, ``a key of ...``) and the code point as an escape (``\\ud800``); or None."""
    todo: deque[tuple[str, Any]] = deque([("", value)])
    while todo:
        where, item = todo.popleft()
        if isinstance(item, str):
            code = _found(item)
            if code is not None:
                return where or "the body", code
        elif isinstance(item, dict):
            for key, inner in item.items():
                code = _found(key)
                if code is not None:
                    return f"a key of {where or 'the body'}", code
                todo.append((f"{where}.{key}" if where else key, inner))
        elif isinstance(item, list):
            todo.extend((f"{where}[{n}]", inner) for n, inner in enumerate(item))
    return None
