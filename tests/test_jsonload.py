"""The hot paths' JSON decoding (orjson) decodes exactly what the standard library decodes, to the
same values, and refuses what it refuses."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector import jsonload

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(_VALUES, st.booleans(), st.booleans())
def test_decodes_what_the_standard_library_decodes(value: object, ascii_only: bool, as_bytes: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    expected = json.loads(text)
    got = jsonload.loads(text.encode("utf-8", "surrogatepass") if as_bytes and ascii_only else text)
    assert _same(got, expected), (text, got, expected)


@pytest.mark.parametrize(
    "text",
    [
        "123456789012345678901234567890",  # past 64 bits: exact, not a float
        "[NaN, Infinity, -Infinity]",
        '"\\ud800"',  # a lone surrogate
        '{"a": 1, "a": 2}',
        "[1E400, -0.0, 5e-324]",
        '{"order": 18446744073709551616}',
    ],
)
def test_the_edges_decode_as_the_standard_library_does(text: str) -> None:
    assert _same(jsonload.loads(text), json.loads(text))
    assert _same(jsonload.loads(text.encode()), json.loads(text))


@pytest.mark.parametrize("bad", [b"\xff", "{", "[1,]", "", "nan", b'{"a": }'])
def test_refuses_what_the_standard_library_refuses(bad: str | bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(bad)
    with pytest.raises(ValueError):
        jsonload.loads(bad)
