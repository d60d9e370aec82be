"""Destination configuration of an account: which ESPs, their credentials (by environment variable
name), and what each segment and computed trait becomes there.

In the account file (see docs/destinations.md)::

    destinations:
      mailchimp:                       # the destination's name; `type` defaults to it
        api_key_env: ACME_MAILCHIMP_KEY
        list_id: "a1b2c3"
        status_if_new: transactional   # contacts without marketing consent
        segments:
          cart_abandoner: {tags: ["cart abandoner"], lists: ["4411"]}
        fields: {lifetime_value: LTV}

Invalid configuration raises :class:`ConfigError` naming the file and path.

The API key goes wherever ``base_url`` points, so ``base_url`` must be the vendor's own HTTPS host
(``https://<dc>.api.mailchimp.com``, ``https://api.hubapi.com`` or ``https://api.hubspot.com``,
``https://a.klaviyo.com``) unless the destination sets ``sandbox: true`` (loopback fakes, tests).

This module does not import :mod:`connector.config`: it takes any object with the account's
``id``, ``file`` and raw ``destinations`` section; :mod:`connector.config` calls it at load.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from adapters.base import (
    AUDIENCE,
    LIST,
    MERGE_FIELD,
    PROPERTY,
    STATIC_SEGMENT,
    TAG,
    Adapter,
    RetryPolicy,
)
from adapters.change import CONSENT_UNKNOWN, Change
from adapters.hubspot import HubSpotAdapter, HubSpotConfig
from adapters.klaviyo import KlaviyoAdapter, KlaviyoConfig
from adapters.mailchimp import MERGE_TAG, STATUSES_IF_NEW, MailchimpAdapter, MailchimpConfig, data_centre
from adapters.ratelimit import RateLimiter
from adapters.webhook import WebhookAdapter, WebhookConfig
from connector.analytics.assign import CONTROL, TREATED, VARIANT_NAMES, is_control, variant_index
from connector.errors import ConfigError, env_name_shown
from connector.suggest import NamedDict, schema_problems, unknown
from rules.schema import flatten

TYPES = ("mailchimp", "hubspot", "klaviyo", "webhook")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_BATCH = {"mailchimp": 500, "hubspot": 1000, "klaviyo": 10_000, "webhook": 100}
DEFAULT_BATCH = {"mailchimp": 500, "hubspot": 1000, "klaviyo": 10_000, "webhook": 50}
# The hosts each ESP's API key may be sent to (without ``sandbox: true``).
VENDOR_HOSTS: dict[str, re.Pattern[str]] = {
    "mailchimp": re.compile(r"^[a-z]+[0-9]+\.api\.mailchimp\.com$"),
    "hubspot": re.compile(r"^api\.(hubapi|hubspot)\.com$"),
    "klaviyo": re.compile(r"^a\.klaviyo\.com$"),
}
VENDOR_URLS = {
    "mailchimp": "https://<dc>.api.mailchimp.com",
    "hubspot": "https://api.hubapi.com or https://api.hubspot.com",
    "klaviyo": "https://a.klaviyo.com",
}


class AccountFile(Protocol):
    """What this module needs of a loaded account (``connector.config.Account`` has it)."""

    @property
    def id(self) -> str: ...

    @property
    def file(self) -> str: ...

    @property
    def destinations(self) -> Any: ...


def _timezone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValidationError(f"unknown time zone {name!r}") from err


def _known_type(kind: str) -> None:
    if kind not in TYPES:
        raise ValidationError(unknown("destination type", kind, TYPES))


def _tri_state(value: object) -> None:
    if value not in (True, False, "auto"):
        raise ValidationError(f"must be true, false or auto, not {value!r}")


def _percent(value: object) -> None:
    if percent_of(value) is None:
        raise ValidationError(f'must be a percentage from 0 to 50 (10 or "10%"), not {value!r}')


def percent_of(value: object) -> float | None:
    """``10``, ``10.5`` or ``"10%"`` as a number of percent (0-50), None when it is not one."""
    if isinstance(value, str) and value.strip().endswith("%"):
        value = value.strip()[:-1]
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if 0 <= number <= 50 else None


class VariantSchema(Schema):
    class Meta:
        unknown = RAISE

    tags = fields.List(fields.String(validate=validate.Length(min=1, max=100)), load_default=list)
    lists = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)


class JourneySchema(Schema):
    class Meta:
        unknown = RAISE

    journey_id = fields.String(required=True, validate=validate.Regexp(r"^[0-9]+$", error="digits only"))
    step_id = fields.String(required=True, validate=validate.Regexp(r"^[0-9]+$", error="digits only"))


class MappingSchema(Schema):
    class Meta:
        unknown = RAISE

    tags = fields.List(fields.String(validate=validate.Length(min=1, max=100)), load_default=list)
    lists = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    # analytics (docs/analytics.md): a control group kept out of the destination, A/B variants
    holdout = fields.Raw(load_default=0, validate=_percent)
    holdout_salt = fields.String(load_default="", validate=validate.Length(max=64))
    control_tag = fields.String(load_default=None, validate=validate.Length(min=1, max=100))
    variants = NamedDict("variant", VARIANT_NAMES[:8], values=fields.Nested(VariantSchema), load_default=dict)
    # mailchimp: start a Customer Journey step when a person enters the segment
    journey = fields.Nested(JourneySchema, load_default=None)


class DestinationSchema(Schema):
    class Meta:
        unknown = RAISE

    type = fields.String(validate=_known_type, load_default=None)
    enabled = fields.Boolean(load_default=True)
    api_key_env = fields.String(
        required=True, validate=validate.Regexp(ENV_NAME, error="not a variable name")
    )
    base_url = fields.Url(load_default=None, require_tld=False, schemes={"http", "https"})
    # true: base_url may be any http(s) URL (loopback fakes); the API key is sent there
    sandbox = fields.Boolean(load_default=False)
    segments = fields.Dict(keys=fields.String(), values=fields.Nested(MappingSchema), load_default=dict)
    fields_ = fields.Dict(
        data_key="fields",
        keys=fields.String(),
        values=fields.String(validate=validate.Length(min=1)),
        load_default=dict,
    )
    batch_delay_ms = fields.Integer(load_default=500, validate=validate.Range(min=0, max=1000))
    batch_size = fields.Integer(load_default=None, validate=validate.Range(min=1))
    retry_hours = fields.Float(load_default=24.0, validate=validate.Range(min=0))
    # mailchimp
    list_id = fields.String(load_default=None)
    status_if_new = fields.String(load_default="transactional", validate=validate.OneOf(STATUSES_IF_NEW))
    subscribe_with_consent = fields.Boolean(load_default=True)
    concurrency = fields.Integer(load_default=10, validate=validate.Range(min=1, max=10))
    # hubspot
    tags_property = fields.String(load_default="esp_tags")
    # true | false | auto: read the tags property before writing it (see docs/destinations.md)
    preserve_unowned_tags = fields.Raw(load_default="auto", validate=_tri_state)
    create_properties = fields.Boolean(load_default=True)
    per_ten_seconds = fields.Integer(load_default=100, validate=validate.Range(min=1))
    # the daily quota of the account's tier (Free/Starter 250,000; Professional 650,000; Enterprise
    # 1,000,000; +1,000,000 per API Limit Increase pack)
    per_day = fields.Integer(load_default=250_000, validate=validate.Range(min=1, max=10_000_000))
    timezone = fields.String(load_default="UTC", validate=_timezone)
    # klaviyo
    revision = fields.String(load_default="2024-10-15", validate=validate.Regexp(r"^\d{4}-\d{2}-\d{2}"))
    segment_events = fields.Boolean(load_default=False)
    # webhook: where the signed entry and exit notifications go (api_key_env holds its whsec_ secret)
    url = fields.Url(load_default=None, require_tld=False, schemes={"http", "https"})
    triggers = fields.List(
        fields.String(validate=validate.OneOf(("entered", "exited"))),
        load_default=lambda: ["entered", "exited"],
    )


@dataclass(frozen=True)
class SegmentMapping:
    tags: frozenset[str] = frozenset()
    lists: frozenset[str] = frozenset()
    holdout: float = 0.0  # percent of members kept out of the destination (the control group)
    holdout_salt: str = ""
    control_tag: str | None = None  # what control members get instead (None: nothing)
    variants: Mapping[str, SegmentMapping] = field(default_factory=dict)  # "a", "b", ...
    journey: tuple[str, str] | None = None  # mailchimp (journey id, step id) started on entry

    def arm(self, account: str, segment: str, profile_id: str) -> str:
        """The person's arm: ``c`` (control), a variant name, or ``t`` (treated, no variants)."""
        if is_control(account, segment, profile_id, self.holdout, self.holdout_salt):
            return CONTROL
        if self.variants:
            names = sorted(self.variants)
            return names[variant_index(account, segment, profile_id, len(names))]
        return TREATED


@dataclass(frozen=True)
class MappedPath:
    """One ESP object the account file names, and where: ``kind`` (``adapters.base.MAPPED_KINDS``)
    and ``id`` at ``path`` (``destinations.mc.segments.vip.lists[0]``), for ``segment`` (None for
    the audience, a field or the tags property)."""

    kind: str
    id: str
    path: str
    segment: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "path": self.path, "segment": self.segment}


@dataclass(frozen=True)
class Destination:
    account: str
    name: str
    type: str
    api_key_env: str
    enabled: bool
    segments: Mapping[str, SegmentMapping]
    fields: Mapping[str, str]  # computed trait → ESP field
    batch_delay_seconds: float
    batch_size: int
    retry_seconds: float
    options: Mapping[str, Any] = field(default_factory=dict)
    file: str = ""  # the account file it was read from
    mapped: tuple[MappedPath, ...] = ()  # every ESP object its mapping names, in file order

    def where(self, kind: str, object_id: str, segments: Iterable[str] = ()) -> list[MappedPath]:
        """Where the file names the ESP object ``kind`` ``object_id``: those of ``segments`` when
        some are (a dead letter's change), else every place; none when the file no longer names it."""
        found = [m for m in self.mapped if m.kind == kind and m.id == object_id]
        wanted = set(segments)
        theirs = [m for m in found if m.segment in wanted]
        return theirs or found

    def change(
        self,
        profile_id: str,
        version: int,
        segments: Iterable[str],
        traits: Mapping[str, Any],
        email: str | None,
        consent: str = CONSENT_UNKNOWN,
        identities: Mapping[str, str] | None = None,
    ) -> Change:
        """The desired state of one contact here, from its segments and computed traits."""
        members = {s for s in segments if s in self.segments}
        tags: set[str] = set()
        lists: set[str] = set()
        for seg in sorted(members):
            mapping = self.segments[seg]
            arm = mapping.arm(self.account, seg, profile_id)
            if arm == CONTROL:  # in the segment, kept out of the destination (docs/analytics.md)
                members.discard(seg)
                tags |= {mapping.control_tag} if mapping.control_tag else set()
                continue
            variant = mapping.variants.get(arm, SegmentMapping())
            tags |= mapping.tags | variant.tags
            lists |= mapping.lists | variant.lists
        values = {target: traits.get(trait) for trait, target in self.fields.items()}
        return Change(
            account=self.account,
            destination=self.name,
            profile_id=profile_id,
            version=version,
            email=email,
            tags=frozenset(tags),
            lists=frozenset(lists),
            fields=values,
            consent=consent,
            identities=dict(identities or {}),
            segments=frozenset(members),
        )


_PARSED: dict[int, tuple[AccountFile, dict[str, Destination]]] = {}


def destinations(account: AccountFile) -> dict[str, Destination]:
    """The account's destinations, validated (ConfigError names file and path); parsed once per
    loaded Account object."""
    cached = _PARSED.get(id(account))
    if cached is not None and cached[0] is account:
        return cached[1]
    parsed = _parse(account)
    if len(_PARSED) > 1000:
        _PARSED.clear()
    _PARSED[id(account)] = (account, parsed)
    return parsed


def _schema_error(file: str, path: str, err: ValidationError) -> ConfigError:
    problems = schema_problems(DestinationSchema(), flatten(err.messages))
    where, reason = problems[0] if problems else ("", "invalid")
    extra = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ConfigError(reason + extra, file=file, path=f"{path}.{where}" if where else path)


def check_base_url(kind: str, url: str | None, sandbox: bool) -> str | None:
    """Why ``url`` may not receive ``kind``'s API key, or None when it may. Vendor hosts over HTTPS
    only (default port, no credentials in the URL); with ``sandbox`` any http(s) URL."""
    if url is None or sandbox:
        return None
    parts = urlsplit(url)
    if parts.scheme != "https":
        return "must be https (the API key is sent there); set sandbox: true for a local fake"
    try:
        port = parts.port
    except ValueError:
        port = -1
    host = (parts.hostname or "").lower()
    if parts.username is not None or port not in (None, 443) or not VENDOR_HOSTS[kind].match(host):
        return (
            f"must be {VENDOR_URLS[kind]} (the API key is sent there); "
            "set sandbox: true to send it to a local fake"
        )
    return None


def _check(file: str, path: str, kind: str, data: Mapping[str, Any]) -> None:
    """The checks across keys of one destination: its type, where its key may go, Mailchimp's ids."""
    if kind not in TYPES:  # no `type:`, so the name is the type
        raise ConfigError(
            unknown("destination type", kind, TYPES) + " (or set `type:` to one of them)",
            file=file,
            path=path,
        )
    if kind == "webhook":
        _check_webhook(file, path, data)
        return
    refused = check_base_url(kind, data["base_url"], data["sandbox"])
    if refused:
        raise ConfigError(refused, file=file, path=f"{path}.base_url")
    if kind != "mailchimp":
        return
    if not data["list_id"]:
        raise ConfigError("required for mailchimp (the audience id)", file=file, path=f"{path}.list_id")
    for trait, field_name in data["fields_"].items():
        if not MERGE_TAG.fullmatch(str(field_name)):
            raise ConfigError(
                f"{field_name!r} is not a Mailchimp merge tag (1-10 characters A-Z, 0-9 or _, "
                "starting with a letter, e.g. CARTVAL)",
                file=file,
                path=f"{path}.fields.{trait}",
            )


def _check_webhook(file: str, path: str, data: Mapping[str, Any]) -> None:
    """A webhook destination: the URL it posts to (https unless ``sandbox``), no journeys."""
    url = data["url"]
    if not url:
        raise ConfigError(
            "required for webhook (where the notifications are posted)", file=file, path=f"{path}.url"
        )
    if urlsplit(url).scheme != "https" and not data["sandbox"]:
        raise ConfigError(
            "must be https (the requests are signed); set sandbox: true for a local receiver",
            file=file,
            path=f"{path}.url",
        )
    for seg, mapping in data["segments"].items():
        if mapping.get("journey"):
            raise ConfigError("journeys are Mailchimp's", file=file, path=f"{path}.segments.{seg}.journey")


def _parse(account: AccountFile) -> dict[str, Destination]:
    raw = account.destinations or {}
    if not isinstance(raw, dict):
        raise ConfigError(
            "must be a mapping of destination name to settings", file=account.file, path="destinations"
        )
    out: dict[str, Destination] = {}
    for name, cfg in raw.items():
        path = f"destinations.{name}"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError("destination names must match [a-z0-9_-]", file=account.file, path=path)
        if not isinstance(cfg, dict):
            raise ConfigError("must be a mapping", file=account.file, path=path)
        try:
            data = DestinationSchema().load(cfg)
        except ValidationError as err:
            raise _schema_error(account.file, path, err) from err
        kind = data["type"] or name
        _check(account.file, path, kind, data)
        size = data["batch_size"] or DEFAULT_BATCH[kind]
        if size > MAX_BATCH[kind]:
            raise ConfigError(
                f"at most {MAX_BATCH[kind]} for {kind}", file=account.file, path=f"{path}.batch_size"
            )
        options = {
            k: v
            for k, v in data.items()
            if k
            not in (
                "type",
                "enabled",
                "api_key_env",
                "segments",
                "fields_",
                "batch_delay_ms",
                "batch_size",
                "retry_hours",
            )
        }
        out[name] = Destination(
            account=account.id,
            name=name,
            type=kind,
            api_key_env=data["api_key_env"],
            enabled=data["enabled"],
            segments={seg: _mapping(m) for seg, m in data["segments"].items()},
            fields=dict(data["fields_"]),
            batch_delay_seconds=data["batch_delay_ms"] / 1000,
            batch_size=size,
            retry_seconds=data["retry_hours"] * 3600,
            options=options,
            file=account.file,
            mapped=_mapped(kind, path, data),
        )
    _check_variants(account, out)  # each mapping against its rule's variants, then against each other
    _check_holdouts(account.file, out)
    return out


def _mapped(kind: str, path: str, data: Mapping[str, Any]) -> tuple[MappedPath, ...]:
    """The ESP objects a destination's settings name, with their paths (:class:`MappedPath`)."""
    if kind == "webhook":
        return ()
    lists_kind, field_kind = (STATIC_SEGMENT, MERGE_FIELD) if kind == "mailchimp" else (LIST, PROPERTY)
    out: list[MappedPath] = []
    if kind == "mailchimp":
        out.append(MappedPath(AUDIENCE, str(data["list_id"]), f"{path}.list_id"))
    tagged = False
    for seg, m in data["segments"].items():
        at = f"{path}.segments.{seg}"
        parts = [(at, m), *((f"{at}.variants.{v}", vm) for v, vm in m["variants"].items())]
        for where, part in parts:
            out += [MappedPath(TAG, t, f"{where}.tags[{i}]", seg) for i, t in enumerate(part["tags"])]
            out += [
                MappedPath(lists_kind, x, f"{where}.lists[{i}]", seg) for i, x in enumerate(part["lists"])
            ]
            tagged = tagged or bool(part["tags"])
        if m["control_tag"]:
            out.append(MappedPath(TAG, m["control_tag"], f"{at}.control_tag", seg))
            tagged = True
    if kind == "hubspot" and tagged:  # the checkbox property the tags are options of
        out.append(MappedPath(PROPERTY, data["tags_property"], f"{path}.tags_property"))
    out += [MappedPath(field_kind, str(f), f"{path}.fields.{trait}") for trait, f in data["fields_"].items()]
    return tuple(out)


def _mapping(m: Mapping[str, Any]) -> SegmentMapping:
    journey = m.get("journey")
    return SegmentMapping(
        frozenset(m["tags"]),
        frozenset(m["lists"]),
        holdout=percent_of(m["holdout"]) or 0.0,
        holdout_salt=m["holdout_salt"],
        control_tag=m["control_tag"],
        variants={
            name: SegmentMapping(frozenset(v["tags"]), frozenset(v["lists"]))
            for name, v in m["variants"].items()
        },
        journey=(journey["journey_id"], journey["step_id"]) if journey else None,
    )


# (holdout percent, holdout salt, variant names): what every mapping of a segment must agree on
_Shape = tuple[float, str, tuple[str, ...]]


def _shape(m: SegmentMapping) -> _Shape:
    return (m.holdout, m.holdout_salt if m.holdout else "", tuple(sorted(m.variants)))


def _parts(shape: _Shape) -> list[str]:
    holdout, salt, variants = shape
    parts = [f"`holdout: {holdout:g}%`"] if holdout else []
    parts += [f'`holdout_salt: "{salt}"`'] if salt else []
    return parts + ([f"`variants` {', '.join(variants)}"] if variants else [])


def _shown(shape: _Shape) -> str:
    return ", ".join(_parts(shape)) or "no holdout or variants"


def _wanted(want: _Shape, have: _Shape) -> str:
    """What to write to match ``want``: its settings, and none of those ``have`` has beyond them."""
    parts = _parts(want)
    for value, mine, what in zip(want, have, ("holdout", "holdout_salt", "variants"), strict=True):
        if mine and not value:
            parts.append(f"no {what}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _check_holdouts(file: str, out: Mapping[str, Destination]) -> None:
    """A segment's holdout and variants are the account's, not one destination's: once one
    destination maps a segment with a holdout or variants, every destination that maps it (webhook
    and disabled ones included) states the same ones. A mapping without them would push the control
    group (or every arm alike) there: the holdout would hold nobody out."""
    first: dict[str, tuple[str, _Shape]] = {}
    for name, dest in out.items():
        for seg, m in dest.segments.items():
            if (m.holdout or m.variants) and seg not in first:
                first[seg] = (name, _shape(m))
    for name, dest in out.items():
        for seg, m in dest.segments.items():
            if seg not in first or _shape(m) == first[seg][1]:
                continue
            other, want = first[seg]
            there = f"`destinations.{other}.segments.{seg}`"
            raise ConfigError(
                f"`{seg}` has {_shown(want)} in {there} and {_shown(_shape(m))} here: write the same "
                f"{_wanted(want, _shape(m))} as {there} (a segment has one control group and one set of "
                "variants, stated by every destination that maps it: otherwise this destination reaches "
                "the control group too, or every variant alike)",
                file=file,
                path=f"destinations.{name}.segments.{seg}",
            )


def _check_variants(account: Any, out: Mapping[str, Destination]) -> None:
    """A segment whose rules declare ``n`` variants (``within: [24h, 48h]``) is mapped with the
    variants ``a`` .. the ``n``-th name, or with none (every variant gets the segment's tags); the
    same on every destination that maps it (:func:`_check_holdouts`)."""
    ruleset = getattr(account, "ruleset", None)
    by_name = getattr(ruleset, "by_name", {}) or {}
    for name, dest in out.items():
        for seg, m in dest.segments.items():
            count = len(getattr(by_name.get(seg), "variants", ()))
            if count > 1 and m.variants and sorted(m.variants) != list(VARIANT_NAMES[:count]):
                raise ConfigError(
                    f"the rules of `{seg}` declare {count} variants: map "
                    f"{', '.join(VARIANT_NAMES[:count])} (or no variants)",
                    file=account.file,
                    path=f"destinations.{name}.segments.{seg}.variants",
                )


def check_data_centre(destination: Destination, api_key: str) -> None:
    """A Mailchimp key's ``-<dc>`` suffix names the API host: refuse one that is no data centre
    (naming the destination, never the key) unless ``base_url`` replaces the host."""
    if destination.options.get("base_url"):
        return
    try:
        data_centre(api_key)
    except ValueError as err:
        raise ConfigError(
            f"the key in environment variable {env_name_shown(destination.api_key_env)} does not end in a "
            "Mailchimp "
            "data centre (like -us6), which names the API host; set base_url to use another host",
            path=f"destinations.{destination.name}.api_key_env",
        ) from err


def build_adapter(
    destination: Destination,
    limiter: RateLimiter | None,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    env: Mapping[str, str] | None = None,
    http_transport: httpx.BaseTransport | None = None,
    timeout: httpx.Timeout | None = None,
    policy: RetryPolicy | None = None,
) -> Adapter:
    """The adapter of a destination, with its credential read from the environment; ``timeout``
    and ``policy`` replace the adapter's own (a mapping check's short ones)."""
    env = os.environ if env is None else env
    secret = env.get(destination.api_key_env)
    if not secret:
        raise ConfigError(
            f"environment variable {env_name_shown(destination.api_key_env)} is not set",
            path=f"destinations.{destination.name}.api_key_env",
        )
    o = destination.options
    kw: dict[str, Any] = {
        "limiter": limiter,
        "clock": clock,
        "sleep": sleep,
        "http_transport": http_transport,
        **({"timeout": timeout} if timeout is not None else {}),
        **({"policy": policy} if policy is not None else {}),
    }
    if destination.type == "webhook":
        triggers = tuple(o["triggers"])
        return WebhookAdapter(WebhookConfig(secret=secret, url=o["url"], triggers=triggers), **kw)
    if destination.type == "mailchimp":
        check_data_centre(destination, secret)
        mc = MailchimpConfig(
            api_key=secret,
            list_id=o["list_id"],
            base_url=o.get("base_url"),
            status_if_new=o["status_if_new"],
            subscribe_with_consent=o["subscribe_with_consent"],
            concurrency=o["concurrency"],
            journeys={seg: m.journey for seg, m in destination.segments.items() if m.journey},
        )
        return MailchimpAdapter(mc, **kw)
    if destination.type == "hubspot":
        hs = HubSpotConfig(
            token=secret,
            base_url=o.get("base_url") or "https://api.hubapi.com",
            tags_property=o["tags_property"],
            preserve_unowned_tags=None
            if o["preserve_unowned_tags"] == "auto"
            else o["preserve_unowned_tags"],
            create_properties=o["create_properties"],
            per_ten_seconds=o["per_ten_seconds"],
            per_day=o["per_day"],
            timezone=o["timezone"],
        )
        return HubSpotAdapter(hs, **kw)
    kl = KlaviyoConfig(
        api_key=secret,
        base_url=o.get("base_url") or "https://a.klaviyo.com",
        revision=o["revision"],
        tags_property=o["tags_property"],
        segment_events=o["segment_events"],
    )
    return KlaviyoAdapter(kl, **kw)
