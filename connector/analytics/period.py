"""``--since`` / ``?since=``: a number of days (``30d``), 1 to 396."""

from __future__ import annotations

import re

SINCE = re.compile(r"^([0-9]{1,3})d$")


def days(since: str) -> int:
    """The days of ``since``; ValueError naming what is wrong."""
    found = SINCE.match(since.strip())
    if not found or not 1 <= int(found.group(1)) <= 396:
        raise ValueError(f"since must be a number of days from 1d to 396d (like 30d), not {since!r}")
    return int(found.group(1))
