"""JSON decoding on the hot paths (stored events, profiles, the ledger): orjson, about twice as
fast as the standard library on the connector's small documents, with :func:`json.loads` for
what orjson refuses and the standard library accepts (``NaN`` and ``Infinity``, lone surrogates)
and for documents with a run of 19 digits or more (orjson reads an integer past 64 bits as a
float, the standard library exactly), so that what decodes, and what it decodes to, stay as they
were."""

from __future__ import annotations

import json
from typing import Any

import orjson

_AS_ZEROS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))  # every digit "0", the rest " "
_LONG = b"0" * 19  # a run of 19 digits: maybe an integer past 64 bits


def loads(data: str | bytes) -> Any:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _LONG not in raw.translate(_AS_ZEROS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)
