"""The ledger's encodings, apart from its Redis side (:mod:`connector.worker.ledger`): results
as they are recorded (codes for names, base-36 instants, traits as canonical JSON), what a record
changes (:class:`_Change`), states as read back in every layout (:class:`_Raw`, :func:`_stored`)
and history entries read back (:func:`_changes`). Compiled with the worker's hot path
(``connector compile``); the constants tests change at run time stay in the ledger module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from connector import jsonload
from connector.clock import isoformat
from connector.profiles.store import NameCodes, base36
from rules.model import Record

TRAITS_SEP = "\x1e"  # in the history entries of the earlier layout: moves, then the traits JSON
OLD_FIELDS = "\x1f"  # between the fields of a migrated stream entry written with whole states

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# what ``json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)`` makes, without
# building an encoder per call
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def _canonical(value: Any) -> str:
    return _CANONICAL.encode(value)


def _b36(n: int) -> str:
    if n < 0:
        raise ValueError("instants before 1970 are not recorded")
    return base36(n)


def _micros(instant: datetime) -> str:
    return _b36((instant - _EPOCH) // _MICROSECOND)


def _instant(text: str) -> datetime:
    return _EPOCH + int(text, 36) * _MICROSECOND


class Diff(Record):
    """What a record changed. Read-only; a plain class (as the others built per profile here) so
    that, compiled, its constructor is native (a frozen dataclass's runs as Python)."""

    _shown = ("version", "segments", "traits", "entered", "exited", "changed_traits", "trimmed")

    def __init__(
        self,
        version: int,
        segments: frozenset[str],
        traits: Mapping[str, Any],
        entered: frozenset[str] = frozenset(),
        exited: frozenset[str] = frozenset(),
        changed_traits: Mapping[str, Any] | None = None,
        trimmed: int = 0,  # history entries dropped at the cap by this record
    ) -> None:
        self.version: Final = version
        self.segments: Final = segments
        self.traits: Final = traits
        self.entered: Final = entered
        self.exited: Final = exited
        self.changed_traits: Final[Mapping[str, Any]] = {} if changed_traits is None else changed_traits
        self.trimmed: Final = trimmed


@dataclass(frozen=True)
class LedgerState:
    version: int
    segments: frozenset[str]
    traits: Mapping[str, Any]


class Entry(Record):
    """One profile's evaluation result, as the ledger records it (read-only)."""

    _shown = ("profile_id", "segments", "traits", "revision", "contact", "force", "due", "rules")

    def __init__(
        self,
        profile_id: str,
        segments: frozenset[str],
        traits: Mapping[str, Any],
        revision: int = 0,
        contact: str = "",
        force: bool = False,
        due: datetime | None = None,  # the result's next_due
        rules: str = "",  # fingerprint of the rules that computed it ("": not reusable)
    ) -> None:
        self.profile_id: Final = profile_id
        self.segments: Final = segments
        self.traits: Final = traits
        self.revision: Final = revision
        self.contact: Final = contact
        self.force: Final = force
        self.due: Final = due
        self.rules: Final = rules


class Stored(Record):
    """A profile's recorded result as read before recording a new one (None/"" when none);
    read-only."""

    _shown = ("segments", "traits", "due", "rules", "revision", "held", "coded")

    def __init__(
        self,
        segments: bytes | None = None,  # the segments as stored (codes; JSON in the earlier layouts)
        traits: bytes | None = None,  # the traits as stored (codes and values; JSON earlier)
        due: datetime | None = None,
        rules: str = "",  # fingerprint of the rules that computed it; "" when it cannot be reused
        revision: int | None = None,  # the profile revision it was computed from
        held: frozenset[str] = frozenset(),  # the segments' names
        coded: bool = True,  # False: an earlier layout (JSON)
    ) -> None:
        self.segments: Final = segments
        self.traits: Final = traits
        self.due: Final = due
        self.rules: Final = rules
        self.revision: Final = revision
        self.held: Final = held
        self.coded: Final = coded

    def members(self) -> frozenset[str]:
        return self.held


class _Codes:
    """Names ↔ codes of one account while recording or reading (:func:`ledger_names`)."""

    def __init__(self, names: NameCodes, account: str) -> None:
        self.names = names
        self.account = account
        self.code: dict[str, str] = {}
        self._names: dict[str, str] = {}

    def need(self, wanted: Iterable[str]) -> None:
        missing = {name for name in wanted if name not in self.code}
        if missing:
            self.code.update(self.names.codes(self.account, missing, checked=True))

    def name(self, code: str) -> str:
        name = self._names.get(code)
        if name is None:
            name = self._names[code] = self.names.name(self.account, code)
            self.code.setdefault(name, code)
        return name

    def segments(self, names: Iterable[str]) -> str:
        return ",".join(self.code[name] for name in sorted(names))

    def traits(self, traits: Mapping[str, Any]) -> tuple[str, str]:
        """``<codes>=<values>`` and the values' JSON ("" for no traits)."""
        names = sorted(traits)
        if not names:
            return "", ""
        values = _canonical([traits[name] for name in names])
        return ",".join(self.code[name] for name in names) + "=" + values, values

    def members(self, raw: bytes | None) -> frozenset[str]:
        return frozenset(self.name(code) for code in raw.decode().split(",")) if raw else frozenset()

    def traits_of(self, raw: bytes | None) -> dict[str, Any]:
        """The stored traits by name, in name order."""
        found = _by_code(raw.decode()) if raw else {}
        return dict(sorted((self.name(code), value) for code, value in found.items()))


def _by_code(text: str) -> dict[str, Any]:
    """``<codes>=<JSON array>`` → {code: value}."""
    if not text:
        return {}
    codes, _, values = text.partition("=")
    return dict(zip(codes.split(","), jsonload.loads(values), strict=True))


class _Change(Record):
    """A result against the stored state it was compared with."""

    _shown = (
        "entry",
        "new_s",
        "new_t",
        "traits",
        "expected",
        "same",
        "history",
        "entered",
        "exited",
        "changed",
    )

    def __init__(
        self,
        entry: Entry,
        new_s: str,
        new_t: str,
        traits: dict[str, Any],
        expected: bytes,  # the stored segments and traits as read ("" for none)
        same: bool,  # segments and traits as stored
        history: str,  # the history entry after its version and instant ("" for none)
        entered: frozenset[str],
        exited: frozenset[str],
        changed: dict[str, Any],
    ) -> None:
        self.entry: Final = entry
        self.new_s: Final = new_s
        self.new_t: Final = new_t
        self.traits: Final = traits
        self.expected: Final = expected
        self.same: Final = same
        self.history: Final = history
        self.entered: Final = entered
        self.exited: Final = exited
        self.changed: Final = changed

    @classmethod
    def of(cls, entry: Entry, stored: Stored, codes: _Codes) -> _Change:
        segments = frozenset(entry.segments)
        new_s = codes.segments(segments)
        new_t, values = codes.traits(entry.traits)
        expected = b"" if stored.segments is None else stored.segments + b"\n" + (stored.traits or b"")
        if stored.coded and new_s.encode() == stored.segments and new_t.encode() == (stored.traits or b""):
            traits = dict(entry.traits) if _plain(entry.traits) else _decoded(entry.traits, values)
            return _Change(entry, new_s, new_t, traits, expected, True, "", frozenset(), frozenset(), {})
        traits = _decoded(entry.traits, values)
        if stored.segments is None:
            old_segments: frozenset[str] = frozenset()
            old_traits: dict[str, Any] = {}
            same = not segments and not traits
        elif stored.coded:  # decoded again: the codes of what it held are then known here
            old_segments, old_traits = codes.members(stored.segments), codes.traits_of(stored.traits)
            same = False
        else:
            old_segments = stored.held
            old_traits = jsonload.loads(stored.traits) if stored.traits else {}
            same = _canonical(sorted(segments)) == stored.segments.decode() and _canonical(traits) == (
                (stored.traits or b"").decode()
            )
        changed = {k: v for k, v in traits.items() if old_traits.get(k, _MISSING) != v}
        changed.update({k: None for k in old_traits if k not in traits})
        entered, exited = segments - old_segments, old_segments - segments
        history = ""
        if not same and not (stored.segments is None and not segments):
            codes.need(set(exited) | set(old_traits))
            history = _moves(codes, entered, exited) + " " + _before(codes, stored, old_traits, traits)
        return _Change(entry, new_s, new_t, traits, expected, same, history, entered, exited, changed)

    def args(self, at: str, codes: _Codes, bounds: tuple[int, int, int]) -> list[Any]:
        """The record script's arguments (``bounds``: the history's cap, the most changes the
        string holds and the ones it keeps)."""
        return [
            self.new_s,
            self.new_t,
            self.entry.revision,
            at,
            _suffix(self.entry, codes),
            self.entry.contact,
            self.expected,
            "1" if self.same else "0",
            "1" if self.entry.force else "0",
            f"{at} {self.history}" if self.history else "",
            *bounds,
        ]

    def diff(self, reply: Sequence[Any]) -> Diff:
        return Diff(
            version=int(reply[0]),
            segments=frozenset(self.entry.segments),
            traits=self.traits,
            entered=self.entered,
            exited=self.exited,
            changed_traits=self.changed,
            trimmed=int(reply[1]),
        )


def _decoded(traits: Mapping[str, Any], values: str) -> dict[str, Any]:
    """The traits as JSON gives them back (``values``: their JSON array, in name order)."""
    return dict(zip(sorted(traits), jsonload.loads(values), strict=True)) if values else {}


def _moves(codes: _Codes, entered: Iterable[str], exited: Iterable[str]) -> str:
    return "".join(f"+{codes.code[name]}" for name in sorted(entered)) + "".join(
        f"-{codes.code[name]}" for name in sorted(exited)
    )


def _before(codes: _Codes, stored: Stored, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The traits that changed as they were before: ``<codes absent before>/<codes>=<values>``
    (every trait whose value or JSON differs); ``*`` when nothing was stored."""
    if stored.segments is None:
        return "*"
    absent, earlier = [], []
    for name in sorted(old.keys() | new.keys()):
        was, now = old.get(name, _MISSING), new.get(name, _MISSING)
        if was is _MISSING:
            absent.append(codes.code[name])
        elif now is _MISSING or was != now or not _same_json(was, now):
            earlier.append(name)
    text = ",".join(absent)
    if earlier:
        values = _canonical([old[name] for name in earlier])
        text += "/" + ",".join(codes.code[name] for name in earlier) + "=" + values
    return text


def _same_json(was: Any, now: Any) -> bool:
    """Whether two equal values have the same JSON (``1`` and ``1.0``, ``0.0`` and ``-0.0`` do not)."""
    kind = type(was)
    if kind is not type(now):
        return False
    if kind in (str, int, bool, type(None)):
        return True
    return repr(was) == repr(now) if kind is float else _canonical(was) == _canonical(now)


def _suffix(entry: Entry, codes: _Codes) -> str:
    """``,<next due>,<rules fingerprint code>`` after the instant ("" when the result is not
    reusable)."""
    if not entry.rules:
        return ""
    return f",{_micros(entry.due) if entry.due is not None else ''},{codes.code[entry.rules]}"


def _plain(traits: Mapping[str, Any]) -> bool:
    """Whether the values are what JSON gives back as they are (no conversion on the way)."""
    return all(value is None or type(value) in (str, int, float, bool) for value in traits.values())


def _state_line(value: bytes) -> bytes:
    """The first line of a ledger of this layout (its history, possibly long, is not copied)."""
    end = value.find(b"\n")
    return value if end < 0 else value[:end]


def _generation(reply: Any) -> bytes | None:
    return reply if isinstance(reply, bytes) else None


@dataclass(frozen=True)
class _Raw:
    """A recorded state as read, any layout."""

    segments: bytes | None = None
    traits: bytes | None = None
    version: int | None = None
    revision: int | None = None
    at: bytes = b""  # the instant, followed by ",<due>,<rules>" when reusable
    coded: bool = True  # this layout (codes, base-36 instants); False: an earlier one

    @classmethod
    def of(cls, reply: Any) -> _Raw:
        if not reply:
            return cls()
        kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if kind == "s":
            value = bytes(reply[1])
            if value.startswith(b"["):  # the string of the earlier layout
                segments, _, packed = value.partition(b"\n")
                return cls._packed(segments, packed)
            version, revision, at, _contact, _n, segments, traits = _state_line(value).split(b" ", 6)
            return cls(segments, traits, int(version), int(revision), at)
        flat = list(reply[1])
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        pieces = _joined(fields, b"x")
        if pieces is not None:
            return cls._packed(fields.get(b"s"), pieces)
        v = fields.get(b"v")
        return cls(fields.get(b"s"), _joined(fields, b"t"), int(v) if v else None, coded=False)

    @classmethod
    def _packed(cls, segments: bytes | None, packed: bytes) -> _Raw:
        """``version revision at[,due,rules] contact traits`` of the earlier layouts."""
        version, revision, at, _contact, traits = packed.split(b" ", 4)
        return cls(segments, traits, int(version), int(revision), at, coded=False)


def _joined(fields: Mapping[bytes, bytes], name: bytes) -> bytes | None:
    """A value from its pieces ``name``, ``name1``, ``name2`` ... (None when none is stored)."""
    first = fields.get(name)
    if first is None:
        return None
    pieces = [first]
    while (piece := fields.get(b"%s%d" % (name, len(pieces)))) is not None:
        pieces.append(piece)
    return b"".join(pieces)


def _stored(raw: _Raw, codes: _Codes) -> Stored:
    if raw.segments is None:
        return Stored()
    if not raw.coded:
        held = frozenset(json.loads(raw.segments))
        if not raw.at:  # the oldest hash layout: nothing to reuse
            return Stored(raw.segments, raw.traits, held=held, coded=False)
        _, due, rules = [*raw.at.decode().split(","), "", ""][:3]
        when = datetime.fromtimestamp(float(due), UTC) if due else None
        return Stored(raw.segments, raw.traits, when, rules, raw.revision, held, coded=False)
    _, due, rules = [*raw.at.decode().split(","), "", ""][:3]
    return Stored(
        raw.segments,
        raw.traits,
        _instant(due) if due else None,
        codes.name(rules) if rules else "",
        raw.revision,
        codes.members(raw.segments),
    )


def _changes(codes: _Codes, traits: str, lines: Sequence[bytes]) -> list[dict[str, Any]]:
    """The history entries ``lines`` (the latest ones) read back, oldest first: each change's traits
    are the state's (``traits``) with the later changes undone."""
    after = _by_code(traits)  # the traits after the change being read, by code
    out = []
    for line in reversed(lines):
        text = line.decode()
        if text[0] in "LW":  # moved from an earlier layout's history, as written then
            out.append(_entry(text[1:] if text[0] == "L" else _whole(text[1:])))
            continue
        version, at, moves, before = text.split(" ", 3)
        changed, earlier = _undone(after, before)
        out.append(
            {
                "version": int(version),
                "at": isoformat(_instant(at)),
                "entered": sorted(codes.name(code) for code in _moved(moves, "+")),
                "exited": sorted(codes.name(code) for code in _moved(moves, "-")),
                "traits": dict(sorted((codes.name(code), after[code]) for code in changed)),
            }
        )
        after = earlier
    return out[::-1]


def _moved(moves: str, sign: str) -> list[str]:
    """The codes after ``sign`` in ``+a+b-c``."""
    out, code, kind = [], "", ""
    for char in moves + "+":
        if char in "+-":
            if kind == sign and code:
                out.append(code)
            code, kind = "", char
        else:
            code += char
    return out


def _undone(after: Mapping[str, Any], before: str) -> tuple[list[str], dict[str, Any]]:
    """The codes a change changed (with a value after it) and the traits before it, by code."""
    if before == "*":  # nothing was stored before
        return list(after), {}
    head, _, values = before.partition("=")
    absent, _, valued = head.partition("/")
    earlier = dict(zip(valued.split(","), json.loads(values), strict=True)) if values else {}
    gone = [code for code in absent.split(",") if code]
    changed = [code for code in gone if code in after]
    changed += [code for code, was in earlier.items() if code in after and was != after[code]]
    restored = {code: value for code, value in after.items() if code not in gone}
    restored.update(earlier)
    return changed, restored


def _whole(text: str) -> dict[str, str]:
    """A moved stream entry written with the whole old and new state."""
    version, at, old_s, new_s, old_t, new_t = text.split(OLD_FIELDS)
    return {"v": version, "at": at, "old_s": old_s, "new_s": new_s, "old_t": old_t, "new_t": new_t}


def _entry(item: str | dict[str, str]) -> dict[str, Any]:
    """An entry of the earlier layouts: ``<version> <µs> <moves>[\\x1e<traits>]`` or a stream
    entry's fields."""
    if isinstance(item, dict):
        return {"version": int(item["v"]), **(_read(item) if "d" in item else _read_legacy(item))}
    version, at, change = item.split(" ", 2)
    return {"version": int(version), **_read({"at": at, "d": change})}


def _read(item: Mapping[str, str]) -> dict[str, Any]:
    moves, _, traits = item["d"].partition(TRAITS_SEP)
    names = [move for move in moves.split(",") if move]
    return {
        "at": isoformat(_EPOCH + int(item["at"]) * _MICROSECOND),
        "entered": sorted(move[1:] for move in names if move[0] == "+"),
        "exited": sorted(move[1:] for move in names if move[0] == "-"),
        "traits": json.loads(traits) if traits else {},
    }


def _read_legacy(item: Mapping[str, str]) -> dict[str, Any]:
    """An entry written with the whole old and new state."""
    old_s, new_s = set(json.loads(item["old_s"])), set(json.loads(item["new_s"]))
    old_t, new_t = json.loads(item["old_t"]), json.loads(item["new_t"])
    return {
        "at": item["at"],
        "entered": sorted(new_s - old_s),
        "exited": sorted(old_s - new_s),
        "traits": {k: v for k, v in new_t.items() if old_t.get(k, _MISSING) != v},
    }


_MISSING = object()
