"""Marshmallow schemas of the rule language. Loading gives plain, checked data; ``compile`` builds objects.

A condition is a mapping with exactly one key, the operator (``count``, ``all``, ``sequence`` ...);
a computed trait is a mapping with exactly one key, its kind (``sum``, ``points``, ``composite`` ...).
Both are looked up in :data:`CONDITIONS` / :data:`VALUES`, so an unknown one is refused with its path.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from .durations import DurationError, Span, format_duration, longest, parse_duration, shortest
from .names import canonical
from .suggest import closest, unknown, unknown_field

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
EVENT = re.compile(r"^(?:\*|\w[\w.:-]{0,127})$")  # \w: letters and digits of any script, and _
COMPARE_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "not_in", "contains", "starts_with")
NUMERIC_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "not_in")
WHERE_OPS = (*COMPARE_OPS, "exists")


def _known(names: Any) -> str:
    return ", ".join(sorted(names))


class Strict(Schema):
    class Meta:
        unknown = RAISE

    error_messages = {"unknown": "unknown field"}

    def handle_error(self, error: ValidationError, data: Any, *, many: bool, **kwargs: Any) -> None:
        """Unknown keys first, each as ``unknown field `x` (did you mean `y`?)``; the right spelling
        of a mistyped key is not also reported missing (it is the same mistake)."""
        messages = error.messages
        if many or not isinstance(messages, dict):
            return
        known = [f.data_key or name for name, f in self.load_fields.items()]
        typos: dict[Any, Any] = {}
        meant: set[str] = set()
        for key, reason in messages.items():
            if reason == [self.error_messages["unknown"]]:
                typos[key] = [unknown_field(str(key), known)]
                meant.add(closest(str(key), known) or "")
        if not typos:
            return
        missing = [fields.Field.default_error_messages["required"]]
        rest = {k: v for k, v in messages.items() if k not in typos and not (k in meant and v == missing)}
        messages.clear()
        messages.update({**typos, **rest})


class Duration(fields.Field[Span]):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Span:
        try:
            return parse_duration(value)
        except DurationError as err:
            raise ValidationError(str(err)) from err


NAME_MAX = 128  # the longest name NAME takes


def _name(value: str) -> None:
    if len(value) > NAME_MAX:
        raise ValidationError(f"must be at most {NAME_MAX} characters long (this one has {len(value)})")
    if not NAME.fullmatch(value):
        raise ValidationError("must be a name of letters, digits and _ (then also . : -)")


class Name(fields.String):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate=_name, **kwargs)


class EventName(fields.String):
    """An event name, or ``*`` for any event. Events are stored under their canonical name
    (:func:`rules.names.canonical`: lower-case snake_case, the spec's names mapped), so a name in
    any other form could never match and is refused with the name it is stored as."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate=_stored_event_name, **kwargs)


def _stored_event_name(value: str) -> None:
    if value == "*":
        return
    stored = canonical(value) if value.strip() else ""
    if stored and stored != "unnamed" and stored != value:
        raise ValidationError(
            f"`{value}` would never match: events are stored under lower-case snake_case names "
            f"(the spec's names mapped); did you mean `{stored}`?"
        )
    if not EVENT.fullmatch(value):
        raise ValidationError("must be an event name (letters, digits and _) or *")


class Pair(fields.Field[tuple[Any, Any]]):
    """``[low, high]``, both inclusive."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[Any, Any]:
        if not isinstance(value, list) or len(value) != 2:
            raise ValidationError("must be a list of two values: [low, high]")
        _finite(value)
        return (value[0], value[1])


class Scalars(fields.Field[tuple[Any, ...]]):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[Any, ...]:
        if not isinstance(value, list) or not value:
            raise ValidationError("must be a non-empty list of values")
        if any(isinstance(v, dict | list) for v in value):
            raise ValidationError("must be a list of plain values")
        _finite(value)
        return tuple(value)


def _finite(values: Iterable[Any]) -> None:
    """Refuse NaN and infinities (YAML's ``.nan``, ``.inf``): nothing compares with NaN, everything
    is below infinity, and neither can be written as JSON."""
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValidationError(f"must be a finite number, not {v!r}")


class Scalar(fields.Field[Any]):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, dict | list) or value is None:
            raise ValidationError("must be a plain value (number, text, true/false)")
        _finite((value,))
        return value


class Number(fields.Field[Any]):
    """A number to compare a count with (``gte: 3``); text such as ``three`` is refused."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"must be a number, not {value!r}")
        _finite((value,))
        return value


class Numbers(fields.Field[tuple[Any, ...]]):
    """A list of numbers (``between: [2, 5]``, ``in: [1, 3]``)."""

    def __init__(self, size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = size

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[Any, ...]:
        if not isinstance(value, list) or not value or (self.size is not None and len(value) != self.size):
            shape = "a list of two numbers: [low, high]" if self.size == 2 else "a non-empty list of numbers"
            raise ValidationError(f"must be {shape}")
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int | float)]
        if bad:
            raise ValidationError(f"must be numbers, not {bad[0]!r}")
        _finite(value)
        return tuple(value)


def _count_comparison_fields() -> dict[str, fields.Field[Any]]:
    """A count is a number: every comparison with it takes numbers."""
    made: dict[str, fields.Field[Any]] = {}
    for name in NUMERIC_OPS:
        if name == "between":
            made[name] = Numbers(size=2)
        elif name in ("in", "not_in"):
            made[name] = Numbers()
        else:
            made[name] = Number()
    return made


def _comparison_fields(names: tuple[str, ...]) -> dict[str, fields.Field[Any]]:
    made: dict[str, fields.Field[Any]] = {}
    for name in names:
        if name == "between":
            made[name] = Pair()
        elif name in ("in", "not_in"):
            made[name] = Scalars()
        elif name == "starts_with":
            made[name] = fields.String()
        elif name == "exists":
            made[name] = fields.Boolean()
        else:
            made[name] = Scalar()
    return made


def _require_comparison(data: Mapping[str, Any], ops: tuple[str, ...]) -> None:
    if not any(op in data for op in ops):
        raise ValidationError(f"needs a comparison: one of {', '.join(ops)}")
    _require_possible(data)


def _require_possible(data: Mapping[str, Any]) -> None:
    """Refuse a range nothing is ever in (most often its two ends swapped)."""
    within, older = data.get("within"), data.get("older_than")
    if within is not None and older is not None and longest(within) <= shortest(older):
        shown_within, shown_older = format_duration(within), format_duration(older)
        swapped = (
            f"; did you mean within: {shown_older}, older_than: {shown_within}?" if within != older else ""
        )
        empty = f"nothing is less than {shown_within} and at least {shown_older} old: the window is empty"
        raise ValidationError(empty + swapped, field_name="within")
    pair = data.get("between")
    if pair is not None and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair):
        low, high = pair
        if low > high:
            swap = f"did you mean [{high}, {low}]?"
            raise ValidationError(
                f"nothing is between {low} and {high}: the low end comes first; {swap}", "between"
            )


class WhereField(fields.Field[dict[str, tuple[tuple[str, Any], ...]]]):
    """Property filters: ``{category: shoes, revenue: {gt: 100}}``; a bare value means ``eq``."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> dict[str, tuple[tuple[str, Any], ...]]:
        if not isinstance(value, dict) or not value:
            raise ValidationError("must be a mapping of property: value or property: {operator: value}")
        out: dict[str, tuple[tuple[str, Any], ...]] = {}
        errors: dict[str, Any] = {}
        for prop, spec in value.items():
            if not isinstance(prop, str) or not prop:
                errors[str(prop)] = ["property names must be text"]
                continue
            if not isinstance(spec, dict):
                if isinstance(spec, list):
                    errors[prop] = ["a list of values needs an operator: {in: [...]}"]
                    continue
                out[prop] = (("eq", spec),)
                continue
            try:
                loaded = _WHERE_SCHEMA.load(spec)
            except ValidationError as err:
                errors[prop] = err.messages
                continue
            if not loaded:
                errors[prop] = [f"needs an operator: one of {', '.join(WHERE_OPS)}"]
                continue
            out[prop] = tuple(sorted(loaded.items()))
        if errors:
            raise ValidationError(errors)
        return out


_WHERE_SCHEMA = Strict.from_dict(_comparison_fields(WHERE_OPS))()


class Excepted(fields.List[str]):
    """``except: [names]`` beside ``event: "*"``: any event but events of these names (emails sent
    to the person are no activity of theirs)."""

    def __init__(self, **kwargs: Any) -> None:
        nonempty = validate.Length(min=1, error="needs at least one event name")
        super().__init__(EventName(), data_key="except", validate=nonempty, **kwargs)


class _AnyEventBut(Strict):
    except_ = Excepted()

    @validates_schema
    def _except_with_any_event(self, data: dict[str, Any], **_: Any) -> None:
        if "except_" in data and data.get("event") != "*":
            raise ValidationError('goes with event: "*" only (any event but these)', "except")
        if "*" in data.get("except_", ()):
            raise ValidationError("lists event names; * would leave no event", "except")


class EventSpec(_AnyEventBut):
    event = EventName(required=True)
    where = WhereField()


class _Window(_AnyEventBut):
    event = EventName(required=True)
    where = WhereField()
    within = Duration()
    older_than = Duration()


class CountValue(_Window):
    group_by = Name()


class PropertyValue(CountValue):
    property = Name(required=True)


CountCondition = Strict.from_dict(
    {**CountValue._declared_fields, **_count_comparison_fields()}, name="CountCondition"
)
PropertyCondition = Strict.from_dict(
    {**PropertyValue._declared_fields, **_comparison_fields(NUMERIC_OPS)}, name="PropertyCondition"
)


def _with_check(schema_cls: type[Schema], ops: tuple[str, ...]) -> type[Schema]:
    class Checked(schema_cls):  # type: ignore[valid-type,misc]
        @validates_schema
        def _has_comparison(self, data: dict[str, Any], **_: Any) -> None:
            _require_comparison(data, ops)

    Checked.__name__ = schema_cls.__name__
    return Checked


CountConditionSchema = _with_check(CountCondition, NUMERIC_OPS)
PropertyConditionSchema = _with_check(PropertyCondition, NUMERIC_OPS)

_TRAIT_OPS = (*COMPARE_OPS, "exists", "older_than", "within")
TraitConditionSchema = _with_check(
    Strict.from_dict(
        {
            "name": Name(required=True),
            **_comparison_fields((*COMPARE_OPS, "exists")),
            "older_than": Duration(),
            "within": Duration(),
        },
        name="TraitCondition",
    ),
    _TRAIT_OPS,
)

RecencyConditionSchema = _with_check(
    _AnyEventBut.from_dict(
        {
            "event": EventName(required=True),
            "where": WhereField(),
            "older_than": Duration(),
            "within": Duration(),
        },
        name="RecencyCondition",
    ),
    ("older_than", "within"),
)


class SequenceConditionSchema(Strict):
    first = fields.Nested(EventSpec, required=True)
    then = fields.Nested(EventSpec)
    then_not = fields.Nested(EventSpec)
    within = Duration(required=True)
    first_within = Duration()
    match = fields.String(validate=validate.OneOf(("any", "last")))

    @validates_schema
    def _one_follow_up(self, data: dict[str, Any], **_: Any) -> None:
        if ("then" in data) == ("then_not" in data):
            raise ValidationError("needs exactly one of then (a funnel) or then_not (an absence)")
        first_within, within = data.get("first_within"), data.get("within")
        if "then_not" not in data or first_within is None or within is None:
            return
        if longest(first_within) <= shortest(within):
            shown, gap = format_duration(first_within), format_duration(within)
            raise ValidationError(
                f"a first event at most {shown} old is never {gap} old, so nobody could ever be "
                f"in it: first_within must be longer than within ({gap})",
                "first_within",
            )


class ConditionField(fields.Field[tuple[str, Any]]):
    """One condition: ``{operator: arguments}``, checked against the registry; or the word ``always``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[str, Any]:
        if value == "always":
            return ("always", True)
        if not isinstance(value, dict) or len(value) != 1:
            raise ValidationError(
                f"a condition is a mapping with exactly one operator (one of {_known(CONDITIONS)})"
            )
        ((op, arg),) = value.items()
        loader = CONDITIONS.get(op)
        if loader is None:
            raise ValidationError({op: [unknown("condition", str(op), CONDITIONS)]})
        try:
            return (op, loader(arg))
        except ValidationError as err:
            raise ValidationError({op: err.messages}) from err


class ValueField(fields.Field[tuple[str, Any]]):
    """One computed value: ``{kind: arguments}`` (``count``, ``sum``, ``points``, ``ratio`` ...)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[str, Any]:
        if not isinstance(value, dict) or len(value) != 1:
            raise ValidationError(
                f"a computed trait is a mapping with exactly one kind (one of {_known(VALUES)})"
            )
        ((kind, arg),) = value.items()
        loader = VALUES.get(kind)
        if loader is None:
            raise ValidationError({kind: [unknown("computed trait kind", str(kind), VALUES)]})
        try:
            return (kind, loader(arg))
        except ValidationError as err:
            raise ValidationError({kind: err.messages}) from err


def _schema_loader(schema: type[Schema]) -> Any:
    instance = schema()

    def load(arg: Any) -> Any:
        if not isinstance(arg, dict):
            raise ValidationError("must be a mapping")
        return instance.load(arg)

    return load


def _list_of_conditions(arg: Any) -> Any:
    if not isinstance(arg, list) or not arg:
        raise ValidationError("must be a non-empty list of conditions")
    return fields.List(ConditionField()).deserialize(arg)


def _one_condition(arg: Any) -> Any:
    return ConditionField().deserialize(arg)


def _always(arg: Any) -> Any:
    if arg is not True:
        raise ValidationError("must be true (a condition that always holds), or write when: always")
    return True


class ForSomeSchema(Strict):
    """``for_some``: the events are split by a property's value; holds when, for some value, the condition
    holds over the events with that value (``group_by: category``: "in one category, ...")."""

    group_by = Name(required=True)
    event = EventName(load_default="*")
    where = WhereField()
    when = ConditionField(required=True)


def _segment_name(arg: Any) -> Any:
    if not isinstance(arg, str) or not NAME.fullmatch(arg):
        raise ValidationError("must be a segment name")
    return arg


class PointsRule(Strict):
    event = EventName(required=True)
    where = WhereField()
    within = Duration()
    weight = fields.Float(required=True, allow_nan=False)


class PointsValue(Strict):
    rules = fields.List(fields.Nested(PointsRule), required=True, validate=validate.Length(min=1))
    cap = fields.Float(validate=validate.Range(min=0), allow_nan=False)


class CompositePart(Strict):
    trait = Name(required=True)
    weight = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))
    max = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))


class CompositeValue(Strict):
    parts = fields.List(fields.Nested(CompositePart), required=True, validate=validate.Length(min=1))
    scale = fields.Float(load_default=10.0, validate=validate.Range(min=0, min_inclusive=False))


class RatioValue(Strict):
    numerator = ValueField(required=True)
    denominator = ValueField(required=True)


class FirstLastValue(Strict):
    event = EventName(required=True)
    where = WhereField()


class TraitRefValue(Strict):
    name = Name(required=True)


def _share(arg: Any) -> float:
    """``10%`` or a fraction ``0.1`` → 0.1 (a share of the account's scored profiles)."""
    if isinstance(arg, str) and arg.strip().endswith("%"):
        try:
            value = float(arg.strip()[:-1]) / 100
        except ValueError:
            raise ValidationError(f"{arg!r} is not a percentage like 10%") from None
    elif isinstance(arg, int | float) and not isinstance(arg, bool):
        value = float(arg)
    else:
        raise ValidationError(f"{arg!r} must be a percentage like 10% or a fraction like 0.1")
    if not 0 <= value <= 1:
        raise ValidationError(f"{arg!r} must be between 0% and 100%")
    return value


class Share(fields.Field[float]):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        return _share(value)


class RankSchema(Strict):
    """``rank``: the profile's position in the account's distribution of a predicted trait as of the last
    training; exactly one of ``top``, ``bottom`` and ``between: [from, to]`` (shares from the top)."""

    trait = Name(required=True)
    top = Share()
    bottom = Share()
    between = fields.List(Share(), validate=validate.Length(equal=2))

    @validates_schema
    def _one_range(self, data: dict[str, Any], **_: Any) -> None:
        given = [k for k in ("top", "bottom", "between") if k in data]
        if len(given) != 1:
            raise ValidationError("give exactly one of top, bottom, between")
        if "between" in data and data["between"][0] >= data["between"][1]:
            raise ValidationError({"between": ["the first share must be below the second"]})


CONDITIONS: dict[str, Any] = {
    "all": _list_of_conditions,
    "any": _list_of_conditions,
    "not": _one_condition,
    "trait": _schema_loader(TraitConditionSchema),
    "count": _schema_loader(CountConditionSchema),
    "sum": _schema_loader(PropertyConditionSchema),
    "avg": _schema_loader(PropertyConditionSchema),
    "min": _schema_loader(PropertyConditionSchema),
    "max": _schema_loader(PropertyConditionSchema),
    "distinct": _schema_loader(PropertyConditionSchema),
    "first": _schema_loader(RecencyConditionSchema),
    "last": _schema_loader(RecencyConditionSchema),
    "sequence": _schema_loader(SequenceConditionSchema),
    "in_segment": _segment_name,
    "not_in_segment": _segment_name,
    "for_some": _schema_loader(ForSomeSchema),
    "always": _always,
    "rank": _schema_loader(RankSchema),
}

VALUES: dict[str, Any] = {
    "count": _schema_loader(CountValue),
    "sum": _schema_loader(PropertyValue),
    "avg": _schema_loader(PropertyValue),
    "min": _schema_loader(PropertyValue),
    "max": _schema_loader(PropertyValue),
    "distinct": _schema_loader(PropertyValue),
    "first_at": _schema_loader(FirstLastValue),
    "last_at": _schema_loader(FirstLastValue),
    "points": _schema_loader(PointsValue),
    "composite": _schema_loader(CompositeValue),
    "ratio": _schema_loader(RatioValue),
    "trait": _schema_loader(TraitRefValue),
}


class SegmentSchema(Strict):
    name = Name(required=True)
    description = fields.String()
    when = ConditionField(required=True)


class GroupSchema(Strict):
    name = Name(required=True)
    description = fields.String()
    segments = fields.List(Name(), required=True, validate=validate.Length(min=1))


class IncludeField(fields.Field[dict[str, Any]]):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, Any]:
        if isinstance(value, str):
            return {"template": value, "params": {}}
        if not isinstance(value, dict):
            raise ValidationError("must be a template name or {template: NAME, params: {...}}")
        extra = set(value) - {"template", "params"}
        if extra:
            known = ("template", "params")
            raise ValidationError({k: [unknown_field(str(k), known)] for k in sorted(extra, key=str)})
        template = value.get("template")
        if not isinstance(template, str) or not template:
            raise ValidationError({"template": ["a template name is required"]})
        params = value.get("params") or {}
        if not isinstance(params, dict):
            raise ValidationError({"params": ["must be a mapping of parameter: value"]})
        return {"template": template, "params": dict(params)}


class RulesSchema(Strict):
    include = fields.List(IncludeField(), load_default=list)
    traits = fields.Dict(keys=Name(), values=ValueField(), load_default=dict)
    segments = fields.List(fields.Nested(SegmentSchema), load_default=list)
    groups = fields.List(fields.Nested(GroupSchema), load_default=list)


class TemplateSchema(RulesSchema):
    template = Name(required=True)
    description = fields.String()
    params = fields.Dict(keys=Name(), values=fields.Raw(), load_default=dict)


def flatten(messages: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Marshmallow's nested messages as (``a.b[3].c``, reason) pairs, in document order."""
    out: list[tuple[str, str]] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            if isinstance(key, int):
                path = f"{prefix}[{key}]"
            elif key == "_schema":
                path = prefix
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            if key == "value" and isinstance(value, dict) and prefix:
                out.extend(flatten(value, prefix))
            else:
                out.extend(flatten(value, path))
    elif isinstance(messages, list):
        for item in messages:
            out.extend(flatten(item, prefix))
    else:
        out.append((prefix, str(messages)))
    return out


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
