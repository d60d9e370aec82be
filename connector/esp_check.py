"""Does every ESP object an account's destinations name exist? (``connector config validate --esps``)

For each enabled destination of an account, the adapter is asked (``EspAdapter.check_mapping``, read
requests only, each bounded by ``adapters.base.CHECK_TIMEOUT`` and ``CHECK_POLICY``) about every
list, static segment, audience, tag and field/property its mapping names; each answer is reported at
the path of the account file that names the object, with a did-you-mean among the ESP's existing
objects (:mod:`connector.suggest`) for one that is missing. Nothing is written to any ESP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from adapters.base import (
    CHECK_POLICY,
    CHECK_TIMEOUT,
    CREATED,
    FOUND,
    MISSING,
    UNCHECKED,
    UNUSABLE,
    EspAdapter,
    MappedObject,
    ObjectCheck,
)
from connector.destinations import AccountFile, Destination, MappedPath, build_adapter, destinations
from connector.errors import ConfigError
from connector.suggest import closest

log = logging.getLogger(__name__)

# exit codes of `connector config validate --esps` (docs/destinations.md)
EXIT_OK = 0
EXIT_INVALID = 1  # an account file is invalid, or a mapping names an object the ESP lacks
EXIT_UNCHECKED = 3  # nothing missing, but some mapping could not be checked (credentials, ESP down)

LABELS = {
    FOUND: "ok",
    CREATED: "ok, not yet",
    MISSING: "MISSING",
    UNUSABLE: "UNUSABLE",
    UNCHECKED: "CANNOT CHECK",
}


@dataclass(frozen=True)
class MappingCheck:
    """One mapping as the ESP sees it: the object at ``path`` of ``file`` and what the check found."""

    account: str
    file: str
    destination: str
    type: str
    kind: str
    id: str
    path: str
    segment: str | None
    status: str
    detail: str
    suggestion: str | None = None  # did you mean: "`1003` (cart abandoner)"

    @property
    def problem(self) -> bool:
        return self.status not in (FOUND, CREATED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "file": self.file,
            "destination": self.destination,
            "type": self.type,
            "kind": self.kind,
            "id": self.id,
            "path": self.path,
            "segment": self.segment,
            "status": self.status,
            "detail": self.detail,
            "did_you_mean": self.suggestion,
        }

    def line(self) -> str:
        """``MISSING       acme/mc  static segment 9999  destinations.mc.segments.vip.lists[0]: …``"""
        text = f"{LABELS.get(self.status, self.status):<13} {self.account}/{self.destination}  "
        text += f"{self.kind} {self.id}  {self.path}: {self.detail}"
        if self.suggestion:
            text = f"{text.rstrip('.')}; did you mean {self.suggestion}?"
        return text


def suggestion(wanted: str, existing: Sequence[tuple[str, str]]) -> str | None:
    """The ESP object closest to ``wanted`` by id or by name, as "`id` (name)"; None when none is
    close (a name written where the id belongs finds its id)."""
    by_name = {name: object_id for object_id, name in existing if name}
    names = {object_id: name for object_id, name in existing}
    same_letters = [key for key in [*names, *by_name] if key.casefold() == wanted.casefold()]
    match = same_letters[0] if same_letters else closest(wanted, [*names, *by_name])  # `sb325b`: `SB325B`
    if match is None:
        return None
    object_id = match if match in names else by_name[match]
    name = names.get(object_id)
    return f"`{object_id}` ({name})" if name and name != object_id else f"`{object_id}`"


def _result(dest: Destination, place: MappedPath, check: ObjectCheck) -> MappingCheck:
    hint = suggestion(place.id, check.existing) if check.status == MISSING and check.existing else None
    return MappingCheck(
        account=dest.account,
        file=dest.file,
        destination=dest.name,
        type=dest.type,
        kind=place.kind,
        id=place.id,
        path=place.path,
        segment=place.segment,
        status=check.status,
        detail=check.detail,
        suggestion=hint,
    )


def _unchecked(dest: Destination, reason: str) -> list[MappingCheck]:
    return [_result(dest, m, ObjectCheck(m.kind, m.id, UNCHECKED, reason)) for m in dest.mapped]


def check_destination(
    dest: Destination,
    *,
    env: Mapping[str, str] | None = None,
    http_transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> list[MappingCheck]:
    """Every object ``dest``'s mapping names, as its ESP sees it (one request or a few per object;
    a refused credential stops the requests and reports the rest unchecked with its reason)."""
    try:
        adapter = build_adapter(
            dest,
            None,
            clock=clock,
            sleep=sleep,
            env=env,
            http_transport=http_transport,
            timeout=CHECK_TIMEOUT,
            policy=CHECK_POLICY,
        )
    except (ConfigError, ValueError) as err:  # an unset key variable, a key without a data centre
        return _unchecked(dest, getattr(err, "reason", None) or str(err))
    if not isinstance(adapter, EspAdapter):
        return _unchecked(dest, f"{dest.type} destinations have no check")
    objects = list(dict.fromkeys(MappedObject(m.kind, m.id) for m in dest.mapped))
    try:
        checks = adapter.check_mapping(objects)
    except Exception as err:  # a defect or an answer nobody foresaw: reported, never a traceback
        log.exception("mapping check failed", extra={"account": dest.account, "destination": dest.name})
        return _unchecked(dest, f"unexpected {type(err).__name__} while checking")
    finally:
        adapter.client.close()
    found = {(c.kind, c.id): c for c in checks}
    return [_result(dest, m, found.get((m.kind, m.id), _no_answer(m))) for m in dest.mapped]


def _no_answer(m: MappedPath) -> ObjectCheck:
    return ObjectCheck(m.kind, m.id, UNCHECKED, "the adapter gave no answer for it")


def check_account(account: AccountFile, **kw: Any) -> tuple[list[MappingCheck], list[str]]:
    """(each mapping's check, notes on the destinations not checked: disabled, mapping nothing)."""
    results: list[MappingCheck] = []
    notes: list[str] = []
    for name, dest in destinations(account).items():
        if not dest.enabled:
            notes.append(f"{account.id}/{name}: disabled (enabled: false), not checked")
        elif not dest.mapped:
            notes.append(
                f"{account.id}/{name}: a {dest.type} destination names no ESP object, nothing to check"
            )
        else:
            results += check_destination(dest, **kw)
    return results, notes


def exit_code(results: Iterable[MappingCheck]) -> int:
    """:data:`EXIT_INVALID` when a mapping is missing or unusable, else :data:`EXIT_UNCHECKED` when
    one could not be checked, else :data:`EXIT_OK`."""
    statuses = {r.status for r in results}
    if statuses & {MISSING, UNUSABLE}:
        return EXIT_INVALID
    return EXIT_UNCHECKED if UNCHECKED in statuses else EXIT_OK


def counts(results: Iterable[MappingCheck]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        out[r.status] = out.get(r.status, 0) + 1
    return out
