"""Account configuration: one YAML file per account in a config directory.

Validated with marshmallow at load; an invalid file raises :class:`ConfigError` naming the file,
the path inside it and the reason. Secrets are referenced by environment variable name and are
held in :class:`Secret`, whose ``repr`` never shows the value.

A secret the account owner chooses (see :data:`OWNER_CHOSEN`) must be at least
:data:`MIN_SECRET_LENGTH` characters with at least :data:`MIN_DISTINCT_CHARACTERS` different ones,
or the file is refused; secrets the sender issues (Shopify's and HubSpot's app client secrets,
Mandrill's webhook key) are taken as issued. A Standard Webhooks ``whsec_`` secret must be base64
of at least :data:`MIN_SECRET_BYTES` bytes (Svix issues 24); one without the prefix is owner-chosen.
No secret may start or end with whitespace. See docs/senders.md, "Secret strength".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from connector.analytics import settings as analytics_settings
from connector.destinations import Destination, check_data_centre
from connector.destinations import destinations as parse_destinations
from connector.errors import ConfigError, env_name_shown, file_name_shown
from connector.event import PRIVILEGED_TYPES
from connector.suggest import NamedDict, did_you_mean, schema_problems
from rules import EMPTY, RulesError, RuleSet, compile_rules, yamltext
from rules.schema import flatten

ACCOUNT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SENDERS = (
    "segment",
    "tracking",
    "rudderstack",
    "shopify",
    "klaviyo",
    "hubspot",
    "mailchimp",
    "mandrill",
    "standard_webhooks",
)
HUBSPOT_VERSIONS = ("v1", "v2", "v3")
# The privileged event types each sender can deliver (its receiver's ``privileged``); the tracking
# API (a public write key) and the ESPs' event webhooks deliver none. Shopify's compliance topics
# are accepted without listing them (mandatory for Shopify apps) once ``shop_domain`` is set.
PRIVILEGED_BY_SENDER: dict[str, tuple[str, ...]] = {
    "segment": ("delete",),
    "rudderstack": ("delete",),
    "hubspot": ("delete",),
    "shopify": ("delete", "data_request"),
}
SHOP_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*\.[A-Za-z]{2,}$")
# Senders whose secret the account owner makes up (and can make weak); the others' are issued by the
# sender itself. At least MIN_SECRET_LENGTH characters each.
OWNER_CHOSEN = frozenset({"segment", "tracking", "rudderstack", "mailchimp", "klaviyo"})
MIN_SECRET_LENGTH = 16
MIN_DISTINCT_CHARACTERS = 8  # "x" * 16 or sixteen spaces are no secret
MIN_SECRET_BYTES = 16  # a Standard Webhooks whsec_ key, decoded
WHSEC = "whsec_"


class Secret:
    """A secret value read from the environment. Never printed."""

    __slots__ = ("env", "value")

    def __init__(self, env: str, value: str) -> None:
        self.env = env
        self.value = value

    def __repr__(self) -> str:
        return f"Secret(env={self.env!r}, value='***')"

    __str__ = __repr__

    @property
    def bytes(self) -> bytes:
        return self.value.encode()


class _StringOrList(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
            raise ValidationError("must be an environment variable name or a non-empty list of them")
        for n, name in enumerate(items):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                which = f"item {n + 1}" if isinstance(value, list) else "the value"
                # never echoed: a secret pasted here in place of its variable's name is the usual cause
                raise ValidationError(
                    f"{which} is not an environment variable name (letters, digits and _); the secret "
                    "itself goes in the environment, never in this file"
                )
        return list(items)


class SenderSchema(Schema):
    class Meta:
        unknown = RAISE

    secret_env = _StringOrList(required=True)
    # hubspot: which signature versions this account accepts (v3 by default)
    signature_versions = fields.List(
        fields.String(validate=validate.OneOf(HUBSPOT_VERSIONS)), load_default=None
    )
    # mandrill and hubspot: the URL exactly as registered with the sender (signed by them)
    url = fields.Url(load_default=None, require_tld=False)
    # rudderstack: the static header that carries the shared secret
    header = fields.String(load_default=None)
    # shopify: shop domains allowed to send for this account (any when empty)
    shop_domains = fields.List(fields.String(), load_default=list)
    # shopify: the shop this account serves; compliance requests (redact, data_request) must name it
    shop_domain = fields.String(
        load_default=None,
        validate=validate.Regexp(SHOP_DOMAIN, error="must be a shop domain like acme.myshopify.com"),
    )
    # privileged event types this account accepts from this sender (see PRIVILEGED_BY_SENDER)
    privileged = fields.List(fields.String(validate=validate.OneOf(PRIVILEGED_TYPES)), load_default=list)
    # segment: batch elements the signature does not cover (Actions signs the first one only)
    unsigned_batch_elements = fields.String(
        load_default="refuse", validate=validate.OneOf(("refuse", "accept"))
    )
    # signed senders with a timestamp: accepted clock skew in seconds
    tolerance_seconds = fields.Integer(load_default=300, validate=validate.Range(min=1, max=3600))


class RetentionSchema(Schema):
    class Meta:
        unknown = RAISE

    max_age_days = fields.Integer(load_default=400, validate=validate.Range(min=1))
    max_events = fields.Integer(load_default=5000, validate=validate.Range(min=1))


class IdentitySchema(Schema):
    class Meta:
        unknown = RAISE

    blocked_values = fields.List(
        fields.String(),
        load_default=lambda: ["", "null", "undefined", "0", "unknown", "none", "nil", "n/a", "anonymous"],
    )


class AccountSchema(Schema):
    class Meta:
        unknown = RAISE

    account = fields.String(
        required=True, validate=validate.Regexp(ACCOUNT_ID, error="must match [a-z0-9_-]")
    )
    senders = NamedDict("sender type", SENDERS, values=fields.Nested(SenderSchema), load_default=dict)
    dedupe_ttl_hours = fields.Integer(load_default=72, validate=validate.Range(min=72))
    retention = fields.Nested(RetentionSchema, load_default=lambda: RetentionSchema().load({}))
    identity = fields.Nested(IdentitySchema, load_default=lambda: IdentitySchema().load({}))
    destinations = fields.Raw(load_default=dict)
    rules = fields.Raw(load_default=dict)
    analytics = fields.Raw(load_default=dict)  # connector/analytics/settings.py

    @validates_schema
    def _sender_options(self, data: dict[str, Any], **_: Any) -> None:
        senders = data.get("senders", {})
        mandrill = senders.get("mandrill")
        if mandrill is not None and not mandrill.get("url"):
            raise ValidationError(
                {"senders": {"mandrill": {"url": ["required: the webhook URL exactly as registered"]}}}
            )

    @validates_schema
    def _sender_only(self, data: dict[str, Any], **_: Any) -> None:
        errors = _sender_only_options(data.get("senders", {}))
        if errors:
            raise ValidationError({"senders": errors})


def _sender_only_options(senders: Mapping[str, Any]) -> dict[str, Any]:
    """Options that only some senders take: ``privileged`` (types the sender can deliver),
    ``unsigned_batch_elements`` (segment), ``shop_domain`` (shopify)."""
    errors: dict[str, Any] = {}
    for name, cfg in senders.items():
        deliverable = PRIVILEGED_BY_SENDER.get(name, ())
        wrong = [t for t in cfg.get("privileged") or () if t not in deliverable]
        if wrong:
            can = f"only {', '.join(deliverable)}" if deliverable else "none"
            errors[name] = {"privileged": [f"{name} cannot deliver {', '.join(wrong)} (it delivers {can})"]}
        elif name != "segment" and cfg.get("unsigned_batch_elements") not in (None, "refuse"):
            errors[name] = {"unsigned_batch_elements": ["only the segment sender takes this option"]}
        elif name != "shopify" and cfg.get("shop_domain"):
            errors[name] = {"shop_domain": ["only the shopify sender takes this option"]}
    return errors


@dataclass(frozen=True)
class SenderConfig:
    name: str
    secrets: tuple[Secret, ...]
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Account:
    id: str
    file: str
    senders: Mapping[str, SenderConfig]
    dedupe_ttl_seconds: int
    retention_max_age_days: int
    retention_max_events: int
    blocked_identity_values: frozenset[str]
    destinations: Any
    rules: Any  # the raw ``rules:`` mapping, as written
    ruleset: RuleSet = EMPTY  # compiled at load
    analytics: Any = None  # the raw ``analytics:`` mapping (docs/analytics.md)


def validation_error(file: str, err: ValidationError, schema: Schema | None = None) -> ConfigError:
    problems = flatten(err.messages)
    if schema is not None:
        problems = schema_problems(schema, problems)
    path, reason = problems[0] if problems else ("", "invalid")
    extra = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ConfigError(reason + extra, file=file, path=path or None)


def _read_secrets(file: str, sender: str, names: list[str], env: Mapping[str, str]) -> tuple[Secret, ...]:
    secrets = []
    for name in names:
        value = env.get(name)
        if not value:
            raise ConfigError(
                f"environment variable {env_name_shown(name)} is not set",
                file=file,
                path=f"senders.{sender}.secret_env",
            )
        problem = secret_problem(sender, value)
        if problem:
            raise ConfigError(
                f"the secret in environment variable {name} {problem}",
                file=file,
                path=f"senders.{sender}.secret_env",
            )
        secrets.append(Secret(name, value))
    return tuple(secrets)


_RANDOM_ONE = "use a random one (e.g. `openssl rand -hex 24`)"


def secret_problem(sender: str, value: str) -> str | None:
    """Why ``value`` is too weak a secret for ``sender`` (never quoting it), or None."""
    if value != value.strip():
        return "starts or ends with whitespace; remove it (a stray newline or space is a different secret)"
    if sender == "standard_webhooks" and value.startswith(WHSEC):
        try:
            key = base64.b64decode(value[len(WHSEC) :], validate=True)
        except (binascii.Error, ValueError):
            return f"is not base64 after {WHSEC}; copy the signing secret exactly as the sender shows it"
        if len(key) < MIN_SECRET_BYTES:
            return (
                f"decodes to {len(key)} bytes, fewer than {MIN_SECRET_BYTES}; use the sender's signing "
                "secret, or a random one (e.g. `echo whsec_$(openssl rand -base64 24)`)"
            )
        return None
    if sender in OWNER_CHOSEN or sender == "standard_webhooks":
        if len(value) < MIN_SECRET_LENGTH:
            return f"is shorter than {MIN_SECRET_LENGTH} characters; {_RANDOM_ONE}"
        if len(set(value)) < MIN_DISTINCT_CHARACTERS:
            return f"has fewer than {MIN_DISTINCT_CHARACTERS} different characters; {_RANDOM_ONE}"
    return None


def not_utf8(err: UnicodeDecodeError) -> str:
    """A file that is not UTF-8, said with the first byte that is not and where it is."""
    byte = err.object[err.start : err.start + 1].hex()
    return f"not UTF-8: byte 0x{byte} at offset {err.start}; save the file as UTF-8"


def load_account_file(path: Path, env: Mapping[str, str] | None = None) -> Account:
    env = os.environ if env is None else env
    file = str(path)
    try:
        raw = yamltext.load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else None
        raise ConfigError(f"not valid YAML: {getattr(err, 'problem', err)}", file=file, path=where) from err
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror}", file=file) from err
    except UnicodeDecodeError as err:
        raise ConfigError(not_utf8(err), file=file) from err
    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping with an 'account' key", file=file)
    raw.setdefault("account", path.stem)
    try:
        data = AccountSchema().load(raw)
    except ValidationError as err:
        raise validation_error(file, err, AccountSchema()) from err
    try:
        ruleset = compile_rules(data["rules"] or None)
    except RulesError as err:
        raise ConfigError(err.reason, file=file, path=_rules_path(err.path)) from err
    senders = {
        name: SenderConfig(
            name=name,
            secrets=_read_secrets(file, name, cfg.pop("secret_env"), env),
            options=cfg,
        )
        for name, cfg in data["senders"].items()
    }
    account = Account(
        id=data["account"],
        file=file,
        senders=senders,
        dedupe_ttl_seconds=data["dedupe_ttl_hours"] * 3600,
        retention_max_age_days=data["retention"]["max_age_days"],
        retention_max_events=data["retention"]["max_events"],
        blocked_identity_values=frozenset(v.strip().lower() for v in data["identity"]["blocked_values"]),
        destinations=data["destinations"],
        rules=data["rules"],
        ruleset=ruleset,
        analytics=analytics_settings.load(data["analytics"], file),
    )
    # validates the section (ConfigError with file and path), and what it maps against the rules
    dests = parse_destinations(account)
    _check_mapped_segments(account, dests)
    _check_destination_keys(file, dests, env)
    return account


def _check_destination_keys(file: str, dests: Mapping[str, Destination], env: Mapping[str, str]) -> None:
    """A Mailchimp key that is set must end in a data centre (it names the API host)."""
    for dest in dests.values():
        key = env.get(dest.api_key_env) if dest.type == "mailchimp" else None
        if key:
            try:
                check_data_centre(dest, key)
            except ConfigError as err:
                raise ConfigError(err.reason, file=file, path=err.path) from None


def _check_mapped_segments(account: Account, dests: Mapping[str, Destination]) -> None:
    """Every segment a destination maps is one the account's rules define (when it has rules: a
    file without rules maps segments it has not written yet, and nothing reaches the ESPs)."""
    known = account.ruleset.segment_names
    if not known:
        return
    for name, dest in dests.items():
        for segment in dest.segments:
            if segment not in known:
                defined = ", ".join(sorted(known)) or "none"
                raise ConfigError(
                    f"no segment `{segment}` in this account's rules{did_you_mean(segment, known)}; "
                    f"segments defined: {defined}",
                    file=account.file,
                    path=f"destinations.{name}.segments.{segment}",
                )


def _rules_path(path: str) -> str:
    if not path:
        return "rules"
    return f"rules{path}" if path.startswith("[") else f"rules.{path}"


class Accounts:
    """All accounts of a config directory, with the lookups the receivers need."""

    def __init__(self, accounts: list[Account], serving: Collection[str] = ()) -> None:
        self._by_id: dict[str, Account] = {}
        self._by_write_key: dict[str, str] = {}
        # of two files of one account (a backup copy beside it), the one named after the account is
        # served and the other refused, whichever was read first: a running process, a fresh one and
        # `connector config validate` agree. Of two accounts that claim one write key, the one whose
        # file was ``serving`` already keeps it and the newcomer is refused (a running process:
        # a copied file never takes an account's traffic away); else the first by file name
        for account in sorted(accounts, key=lambda a: _named_after_first(a, serving)):
            if account.id in self._by_id:
                other = file_name_shown(self._by_id[account.id].file)  # the file's name, never its path
                raise ConfigError(
                    f"account {account.id!r} is also defined in {other}",
                    file=account.file,
                    path="account",
                )
            self._by_id[account.id] = account
            tracking = account.senders.get("tracking")
            for secret in tracking.secrets if tracking else ():
                digest = _digest(secret.value)
                if digest in self._by_write_key:
                    raise ConfigError(
                        "this write key is already used by another account",
                        file=account.file,
                        path="senders.tracking.secret_env",
                    )
                self._by_write_key[digest] = account.id

    def get(self, account_id: str) -> Account | None:
        return self._by_id.get(account_id)

    def by_write_key(self, write_key: str) -> Account | None:
        account_id = self._by_write_key.get(_digest(write_key))
        return self._by_id.get(account_id) if account_id else None

    def __iter__(self) -> Iterator[Account]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)


def _digest(value: str) -> str:
    # Lookups by digest: the dict access time does not depend on how much of a guessed key matches.
    return hashlib.sha256(value.encode()).hexdigest()


def _named_after_first(account: Account, serving: Collection[str] = ()) -> tuple[bool, bool, str]:
    return Path(account.file).stem != account.id, account.file not in serving, account.file


def load_accounts(config_dir: Path, env: Mapping[str, str] | None = None) -> Accounts:
    if not config_dir.is_dir():
        raise ConfigError("config directory does not exist", file=str(config_dir))
    files = sorted(p for p in config_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return Accounts([load_account_file(p, env) for p in files])
