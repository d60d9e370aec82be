"""Compile a ``rules:`` section (with its included templates) into a :class:`RuleSet`, once, at load.

Every problem is a :class:`~rules.errors.RulesError` with the path inside the rules; problems inside an
included template name the ``include[i]`` entry and the template.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any, TypeVar, cast

from marshmallow import ValidationError

from . import variants as variant_lists
from .conditions import (
    Always,
    Compare,
    Condition,
    ForSome,
    InSegment,
    Junction,
    Not,
    Sequence_,
    Unmatched,
)
from .durations import DurationError, Months, format_duration, is_duration, longest, parse_duration
from .errors import RulesError
from .ruleset import EMPTY, RuleSet, Segment
from .schema import CONDITIONS, VALUES, RulesSchema, SegmentSchema, TemplateSchema, dumps, flatten
from .suggest import did_you_mean, unknown
from .templates import builtin_templates
from .values import (
    ANY_EVENT,
    Aggregate,
    Composite,
    Computed,
    Occurrence,
    Points,
    ProfileTrait,
    Ratio,
    Selector,
    Value,
    Window,
)

V = TypeVar("V", bound=Value)


class _Origin:
    def __init__(self, prefix: str = "", template: str | None = None) -> None:
        self.prefix = prefix
        self.template = template

    def error(self, path: str, reason: str) -> RulesError:
        if self.template is None:
            return RulesError(path, reason)
        return RulesError(self.prefix, f"template {self.template}: {path}: {reason}")


def _load(schema: Any, raw: Any, origin: _Origin) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = schema.load(raw)
    except ValidationError as err:
        problems = flatten(err.messages)
        path, reason = problems[0] if problems else ("", "invalid")
        more = len(problems) - 1
        error = origin.error(path, reason)
        raise RulesError(error.path, error.reason, more) from err
    return loaded


def substitute(node: Any, params: Mapping[str, Any], path: str = "", template: str = "") -> Any:
    """A template's ``$name`` values replaced by its parameters (``RulesError`` for an unknown one)."""
    if isinstance(node, str) and (path == "description" or path.endswith(".description")):
        return _DESCRIBED.sub(lambda m: _shown_param(params, m), node)  # prose: `$name` shows its value
    if isinstance(node, str) and node.startswith("$"):
        name = node[1:]
        if name not in params:
            raise RulesError(path, f"unknown parameter {node}")
        return params[name]
    if isinstance(node, dict):
        return {
            k: substitute(v, params, f"{path}.{k}" if path else str(k), template) for k, v in node.items()
        }
    if isinstance(node, list):
        return [substitute(v, params, f"{path}[{i}]", template) for i, v in enumerate(node)]
    return node


_DESCRIBED = re.compile(r"\$(\w+)")


def _shown_param(params: Mapping[str, Any], found: re.Match[str]) -> str:
    """A parameter's value as a description shows it (``30d``; a rule variant's values ``24h or
    48h``); a name that is no parameter stays as written."""
    value = params.get(found.group(1), found.group(0))
    if isinstance(value, list):
        return " or ".join(str(v) for v in value)
    return str(value)


def _check_param(default: Any, value: Any) -> str | None:
    if isinstance(default, str) and is_duration(default):
        try:
            parse_duration(value)
        except DurationError as err:
            return str(err)
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int | float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else f"must be a number like {default}"
    if isinstance(default, list):
        return None if isinstance(value, list) else "must be a list"
    if isinstance(default, str):
        return None if isinstance(value, str) else "must be text"
    return None


def _check_param_values(default: Any, value: Any) -> str | None:
    """A parameter's value, or (a list where one value goes) each variant's value."""
    if isinstance(value, list) and not isinstance(default, list):
        for i, item in enumerate(value):
            problem = _check_param(default, item)
            if problem:
                return f"variant {i}: {problem}"
        return None
    return _check_param(default, value)


def _split_variants(doc: Any, origin: _Origin) -> tuple[Any, dict[int, list[Any]]]:
    """The document with each segment's ``when`` as its first variant, and segment index → the raw
    ``when`` of every variant (segments declaring variants only)."""
    segments = doc.get("segments") if isinstance(doc, dict) else None
    if not isinstance(segments, list):
        return doc, {}
    found: dict[int, list[Any]] = {}
    out = []
    for i, seg in enumerate(segments):
        when = seg.get("when") if isinstance(seg, dict) else None
        try:
            n = variant_lists.count(when, f"segments[{i}].when")
        except RulesError as err:
            raise origin.error(err.path, err.reason) from err
        if n > 1:
            found[i] = [variant_lists.pick(when, k) for k in range(n)]
            seg = {**seg, "when": found[i][0]}
        out.append(seg)
    return {**doc, "segments": out}, found


def _load_variants(loaded: dict[str, Any], raw: Mapping[int, list[Any]], origin: _Origin) -> None:
    """Validate every variant's ``when`` and keep them on the loaded segment (``variants``)."""
    for i, whens in raw.items():
        seg = loaded["segments"][i]
        out = []
        for k, when in enumerate(whens):
            try:
                out.append(SegmentSchema().load({"name": seg["name"], "when": when})["when"])
            except ValidationError as err:
                problems = flatten(err.messages)
                path, reason = problems[0] if problems else ("when", "invalid")
                raise origin.error(f"segments[{i}].{path}", f"variant {k}: {reason}") from err
        seg["variants"] = out


def _instantiate(
    template: str, source: Mapping[str, Any], overrides: Mapping[str, Any], prefix: str
) -> dict[str, Any]:
    declared = source.get("params") or {}
    if not isinstance(declared, dict):
        raise RulesError(prefix, f"template {template}: params must be a mapping")
    for name, value in overrides.items():
        if name not in declared:
            raise RulesError(
                f"{prefix}.params.{name}", unknown(f"parameter of template {template}", str(name), declared)
            )
        problem = _check_param_values(declared[name], value)
        if problem:
            raise RulesError(f"{prefix}.params.{name}", problem)
    params = template_params(declared, overrides, prefix)
    body = {k: v for k, v in source.items() if k != "params"}
    varied = {n for n, v in overrides.items() if isinstance(v, list) and not isinstance(declared[n], list)}
    for name, where in _varied_uses(body, varied, ""):
        raise RulesError(
            f"{prefix}.params.{name}",
            f"cannot have variants: template {template} uses it at {where}, {_why_not_varied(where)}",
        )
    origin = _Origin(prefix, template)
    try:
        substituted = substitute(body, params, "", template)
    except RulesError as err:
        raise origin.error(err.path, err.reason) from err
    substituted["params"] = params
    substituted, raw_variants = _split_variants(substituted, origin)
    loaded = _load(TemplateSchema(), substituted, origin)
    _load_variants(loaded, raw_variants, origin)
    if loaded["include"]:
        raise origin.error("include", "a template cannot include other templates")
    return loaded


def _varied_uses(node: Any, varied: set[str], path: str) -> Iterator[tuple[str, str]]:
    """Where a parameter given variants (a list) is used other than as a segment's window or
    threshold: (parameter, path) pairs."""
    if isinstance(node, str) and node.startswith("$") and node[1:] in varied:
        key = path.rsplit(".", 1)[-1]
        if path.startswith("traits.") or key not in variant_lists.KEYS:
            yield node[1:], path
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _varied_uses(v, varied, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _varied_uses(v, varied, f"{path}[{i}]")


def _why_not_varied(where: str) -> str:
    if where.startswith("traits."):
        return "in a computed trait, which has one definition for everyone (variants are per segment)"
    keys = ", ".join(sorted(variant_lists.KEYS))
    return f"where variants are not taken (a segment's {keys} take them)"


# a parameter that is the sum of others (``$win_back_within + $at_risk_after``): never set on its own
_SUM = re.compile(r"\$\w+(?: \+ \$\w+)+")


def template_params(
    declared: Mapping[str, Any], overrides: Mapping[str, Any], prefix: str = "include"
) -> dict[str, Any]:
    """A template's parameters in force: its defaults, the account's values, and the parameters
    that are sums of others added up (RulesError when one of those is set on its own)."""
    params = {**declared, **overrides}
    for name, default in declared.items():
        if isinstance(default, str) and _SUM.fullmatch(default):
            if name in overrides:
                raise RulesError(f"{prefix}.params.{name}", f"is {default}: set those parameters instead")
            for part in re.findall(r"\$(\w+)", default):
                if isinstance(overrides.get(part), list):
                    raise RulesError(
                        f"{prefix}.params.{part}",
                        f"cannot have variants: {name} is {default}, one value for everyone",
                    )
            params[name] = _sum_of(default, params, f"{prefix}.params.{name}")
    return params


def _sum_of(expression: str, params: Mapping[str, Any], path: str) -> str:
    """The duration ``expression`` adds up to with these parameters, spelled as a duration."""
    months, extra = 0, timedelta(0)
    for name in re.findall(r"\$(\w+)", expression):
        try:
            span = parse_duration(params.get(name))
        except DurationError as err:
            raise RulesError(path, f"{expression}: ${name} {err}") from None
        if isinstance(span, Months):
            months, extra = months + span.months, extra + span.extra
        else:
            extra += span
    total = format_duration(Months(months, extra) if months else extra)
    try:
        parse_duration(total)  # the bound every span has
    except DurationError as err:
        raise RulesError(path, f"{expression}: {err}") from None
    return total


RANK_PREFIX = "predicted.rank."


class _Compiler:
    def __init__(self) -> None:
        self.selectors: dict[str, Selector] = {}
        self.values: dict[str, Value] = {}
        self.conditions: dict[str, Condition] = {}
        self.properties: dict[str, set[str]] = {}
        self.lookback = timedelta(0)
        self.unbounded = False
        self.computed: dict[str, Computed] = {}
        self.trait_specs: dict[str, tuple[Any, _Origin, str]] = {}
        self.segment_names: set[str] = set()
        self.refs: dict[str, list[tuple[str, str]]] = {}  # segment → [(referenced, path)]
        self._current_refs: list[tuple[str, str]] = []
        self._grouping = 0  # depth of for_some around the condition being compiled

    # -- shared pieces -------------------------------------------------------------------------
    def selector(self, spec: Mapping[str, Any]) -> Selector:
        made = Selector(spec["event"], spec.get("where"), spec.get("except_"))
        props = self.properties.setdefault(made.event, set())
        props.update(made.props)
        return self.selectors.setdefault(made.key, made)

    def reads(self, event: str, *props: str | None) -> None:
        self.properties.setdefault(event, set()).update(p for p in props if p)

    def window(self, spec: Mapping[str, Any]) -> Window:
        within, older = spec.get("within"), spec.get("older_than")
        if within is None:
            self.unbounded = True
        else:
            self.lookback = max(self.lookback, longest(within))
        return Window(within, older)

    def intern_value(self, value: V) -> V:
        """The first value compiled with this key (a key names the kind of value, so the same type)."""
        return cast(V, self.values.setdefault(value.key, value))

    def intern(self, condition: Condition) -> Condition:
        return self.conditions.setdefault(condition.key, condition)

    def aggregate(self, kind: str, spec: Mapping[str, Any]) -> Aggregate:
        sel = self.selector(spec)
        self.reads(sel.event, spec.get("property"), spec.get("group_by"))
        made = Aggregate(kind, sel, self.window(spec), spec.get("property"), spec.get("group_by"))
        return self.intern_value(made)

    # -- computed traits -----------------------------------------------------------------------
    def trait_ref(self, name: str) -> Value:
        if name in self.computed:
            return self.computed[name]
        return self.intern_value(ProfileTrait(name))

    def value(self, kind: str, spec: Any, origin: _Origin, path: str) -> Value:
        if kind in ("count", "sum", "avg", "min", "max", "distinct"):
            return self.aggregate(kind, spec)
        if kind in ("first_at", "last_at"):
            self.unbounded = True
            return self.intern_value(Occurrence(self.selector(spec), last=kind == "last_at"))
        if kind == "ratio":
            num = self.value(spec["numerator"][0], spec["numerator"][1], origin, f"{path}.numerator")
            den = self.value(spec["denominator"][0], spec["denominator"][1], origin, f"{path}.denominator")
            return self.intern_value(Ratio(num, den))
        if kind == "points":
            rules = []
            for rule in spec["rules"]:
                rules.append((self.aggregate("count", rule), rule["weight"]))
            return self.intern_value(Points(rules, spec.get("cap")))
        if kind == "composite":
            parts = []
            for i, part in enumerate(spec["parts"]):
                ref = self.trait_ref(part["trait"])
                if isinstance(ref, ProfileTrait) and part["trait"] not in self.trait_specs:
                    name = part["trait"]
                    hint = did_you_mean(name, self.trait_specs)
                    raise origin.error(f"{path}.parts[{i}].trait", f"unknown computed trait `{name}`{hint}")
                parts.append((ref, part["weight"], part["max"]))
            return self.intern_value(Composite(parts, spec["scale"]))
        if kind == "trait":
            return self.trait_ref(spec["name"])
        raise origin.error(path, unknown("computed trait kind", kind, VALUES))

    def compile_traits(self) -> list[tuple[str, Value]]:
        for name in self.trait_specs:
            self.computed[name] = Computed(name)
        deps: dict[str, set[str]] = {}
        for name, (spec, origin, path) in self.trait_specs.items():
            computed = self.computed[name]
            computed.expr = self.value(spec[0], spec[1], origin, path)
            deps[name] = set(_trait_deps(spec)) & set(self.trait_specs)
        for name in self.trait_specs:
            cycle = _find_cycle(name, deps)
            if cycle:
                _, origin, path = self.trait_specs[name]
                raise origin.error(path, "reference cycle: " + " → ".join(cycle))
        return [(name, self.computed[name]) for name in self.trait_specs]

    # -- conditions ----------------------------------------------------------------------------
    def condition(self, node: tuple[str, Any], origin: _Origin, path: str) -> Condition:
        op, arg = node
        here = f"{path}.{op}"
        made: Condition
        if op in ("all", "any"):
            made = Junction(op, [self.condition(c, origin, f"{here}[{i}]") for i, c in enumerate(arg)])
        elif op == "not":
            made = Not(self.condition(arg, origin, here))
        elif op == "trait":
            ops = [(k, v) for k, v in arg.items() if k != "name"]
            made = Compare(self.trait_ref(arg["name"]), ops)
        elif op in ("count", "sum", "avg", "min", "max", "distinct"):
            window_keys = {"event", "where", "except_", "within", "older_than", "group_by", "property"}
            ops = [(k, v) for k, v in arg.items() if k not in window_keys]
            made = Compare(self.aggregate(op, arg), ops)
        elif op in ("first", "last"):
            self.unbounded = True
            occurrence = self.intern_value(Occurrence(self.selector(arg), last=op == "last"))
            ops = [(k, v) for k, v in arg.items() if k in ("older_than", "within")]
            made = Compare(occurrence, ops)
        elif op == "sequence":
            made = self.sequence(arg)
        elif op in ("in_segment", "not_in_segment"):
            made = self.reference(op, arg, origin, here)
        elif op == "for_some":
            made = self.for_some(arg, origin, here)
        elif op == "always":
            made = Always()
        elif op == "rank":
            made = self.rank(arg)
        else:  # the schema refuses unknown operators first
            raise origin.error(here, unknown("condition", op, CONDITIONS))
        return self.intern(made)

    def rank(self, arg: Mapping[str, Any]) -> Condition:
        """The profile's share from the top of the account's distribution of a predicted trait, as of the
        last training (the trait ``predicted.rank.<trait>``, see docs/predict.md): ``top: p`` is share <= p,
        ``bottom: p`` share > 1 - p, ``between: [a, b]`` a < share <= b, so adjacent ranges never overlap."""
        trait = str(arg["trait"]).removeprefix(RANK_PREFIX).removeprefix("predicted.")
        share = self.intern_value(ProfileTrait(RANK_PREFIX + trait))
        if "top" in arg:
            ops: list[tuple[str, Any]] = [("lte", arg["top"])]
        elif "bottom" in arg:
            ops = [("gt", 1.0 - arg["bottom"])]
        else:
            ops = [("gt", arg["between"][0]), ("lte", arg["between"][1])]
        return Compare(share, ops)

    def sequence(self, arg: Mapping[str, Any]) -> Condition:
        negate = "then_not" in arg
        follow = arg["then_not"] if negate else arg["then"]
        first_within = arg.get("first_within")
        if first_within is None:
            self.unbounded = True
        else:
            self.lookback = max(self.lookback, longest(first_within) + longest(arg["within"]))
        return Sequence_(
            self.selector(arg["first"]),
            self.selector(follow),
            arg["within"],
            negate,
            first_within,
            last_only=arg.get("match", "last" if negate else "any") == "last",
        )

    def reference(self, op: str, arg: str, origin: _Origin, here: str) -> Condition:
        if self._grouping:
            raise origin.error(
                here, f"{op} cannot be used inside for_some (a segment is about the whole person)"
            )
        if arg not in self.segment_names:
            raise origin.error(here, f"unknown segment `{arg}`{did_you_mean(arg, self.segment_names)}")
        self._current_refs.append((arg, here))
        return InSegment(arg, negate=op == "not_in_segment")

    def for_some(self, arg: Mapping[str, Any], origin: _Origin, here: str) -> Condition:
        sel = self.selector(arg)
        self.reads(sel.event, arg["group_by"])
        self.reads(ANY_EVENT, arg["group_by"])
        self._grouping += 1
        try:
            inner = self.condition(arg["when"], origin, f"{here}.when")
        finally:
            self._grouping -= 1
        return ForSome(sel, arg["group_by"], inner)


def _trait_deps(spec: tuple[str, Any]) -> list[str]:
    kind, arg = spec
    if kind == "trait":
        return [arg["name"]]
    if kind == "composite":
        return [p["trait"] for p in arg["parts"]]
    if kind == "ratio":
        return _trait_deps(arg["numerator"]) + _trait_deps(arg["denominator"])
    return []


def _find_cycle(start: str, deps: Mapping[str, set[str] | list[str]]) -> list[str] | None:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, trail = stack.pop()
        for nxt in sorted(deps.get(node, ())):
            if nxt == start:
                return [*trail, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*trail, nxt]))
    return None


TemplateSource = Callable[[str], Mapping[str, Any] | None]


def compile_rules(
    raw: Mapping[str, Any] | None,
    *,
    templates: TemplateSource | Mapping[str, Mapping[str, Any]] | None = None,
) -> RuleSet:
    """Validate and compile a ``rules:`` mapping.

    ``templates``: name → parsed template, or a lookup function (default: the built-in templates).
    """
    if raw is None or raw == {}:
        return EMPTY
    if not isinstance(raw, Mapping):
        raise RulesError("", "rules must be a mapping with segments, traits, groups and include")
    lookup = _template_lookup(templates)
    listed = raw.get("include")
    split, raw_variants = _split_variants(dict(raw), _Origin())
    data = _load(RulesSchema(), split, _Origin())
    _load_variants(data, raw_variants, _Origin())
    parts: list[tuple[_Origin, dict[str, Any]]] = []
    used: list[str] = []
    for i, include in enumerate(data["include"]):
        name = include["template"]
        source = lookup(name)
        if source is None:
            # `include: [name]` or `include: [{template: name}]`: the path is where the name is written
            written = listed[i] if isinstance(listed, list) and i < len(listed) else None
            where = f"include[{i}]" if isinstance(written, str) else f"include[{i}].template"
            raise RulesError(where, unknown("template", name, _template_names(templates)))
        parts.append(
            (_Origin(f"include[{i}]", name), _instantiate(name, source, include["params"], f"include[{i}]"))
        )
        used.append(name)
    parts.append((_Origin(), data))
    return _build(parts, raw, tuple(used))


def _template_names(templates: TemplateSource | Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    """The names an include may use: the given mapping's, else the built-in templates'."""
    return list(templates) if isinstance(templates, Mapping) else list(builtin_templates())


def _template_lookup(templates: TemplateSource | Mapping[str, Mapping[str, Any]] | None) -> TemplateSource:
    if templates is None:
        return builtin_templates().get
    if isinstance(templates, Mapping):
        return templates.get
    return templates


Parts = list[tuple[_Origin, dict[str, Any]]]
SegmentDef = tuple[_Origin, str, dict[str, Any]]


def _declare_traits(c: _Compiler, parts: Parts) -> None:
    """Every part's computed traits; one defined identically by two parts (two templates) is one trait."""
    trait_defs: dict[str, str] = {}
    for origin, data in parts:
        for name, spec in data["traits"].items():
            path = f"traits.{name}"
            text = dumps(spec)
            if name in c.trait_specs:
                if trait_defs[name] == text:
                    continue
                raise origin.error(path, f"computed trait {name!r} is already defined differently")
            c.trait_specs[name] = (spec, origin, path)
            trait_defs[name] = text


def _declare_segments(c: _Compiler, parts: Parts) -> list[SegmentDef]:
    """Every part's segments, in order; names are unique among segments and computed traits."""
    segment_defs: list[SegmentDef] = []
    for origin, data in parts:
        for i, seg in enumerate(data["segments"]):
            path = f"segments[{i}]"
            if seg["name"] in c.segment_names:
                raise origin.error(f"{path}.name", f"segment {seg['name']!r} is already defined")
            if seg["name"] in c.trait_specs:
                raise origin.error(f"{path}.name", f"{seg['name']!r} is already the name of a computed trait")
            c.segment_names.add(seg["name"])
            segment_defs.append((origin, path, seg))
    return segment_defs


class _Groups:
    """Exclusive groups: a member holds only when its own condition does and no earlier member's does."""

    def __init__(self, c: _Compiler, matched: Mapping[str, Condition]) -> None:
        self.c = c
        self.matched = matched
        self.group_of: dict[str, str] = {}
        self.groups: dict[str, tuple[str, ...]] = {}
        self.effective = dict(matched)
        self.deps: dict[str, set[str]] = {name: {r for r, _ in refs} for name, refs in c.refs.items()}

    def add(self, origin: _Origin, gpath: str, group: Mapping[str, Any]) -> None:
        if group["name"] in self.groups:
            raise origin.error(f"{gpath}.name", f"exclusive group {group['name']!r} is already defined")
        members: list[str] = []
        for si, name in enumerate(group["segments"]):
            spath = f"{gpath}.segments[{si}]"
            if name not in self.matched:
                raise origin.error(spath, f"unknown segment `{name}`{did_you_mean(name, self.matched)}")
            if name in self.group_of:
                raise origin.error(
                    spath, f"segment {name!r} is already in exclusive group {self.group_of[name]!r}"
                )
            self.group_of[name] = group["name"]
            if members:
                self._after(name, members)
            members.append(name)
        self.groups[group["name"]] = tuple(members)

    def _after(self, name: str, members: list[str]) -> None:
        c = self.c
        earlier = [c.intern(Unmatched(self.matched[m], m)) for m in members]
        self.effective[name] = c.intern(Junction("all", [self.matched[name], *earlier]))
        for m in members:
            self.deps[name] |= {r for r, _ in c.refs[m]}

    def position(self, name: str) -> int:
        return self.groups[self.group_of[name]].index(name) if name in self.group_of else 0


def _check_grouped_variants(
    segment_defs: list[SegmentDef], variants: Mapping[str, Any], group_of: Mapping[str, str]
) -> None:
    """A member of an exclusive group has one condition: the group's order decides on it."""
    for origin, path, seg in segment_defs:
        if seg["name"] in variants and seg["name"] in group_of:
            raise origin.error(
                f"{path}.when",
                f"variants: segment {seg['name']!r} is in exclusive group {group_of[seg['name']]!r}, "
                "whose members have one condition each",
            )


def _build(parts: Parts, raw: Mapping[str, Any], used: tuple[str, ...]) -> RuleSet:
    c = _Compiler()
    _declare_traits(c, parts)
    segment_defs = _declare_segments(c, parts)
    traits = c.compile_traits()
    matched: dict[str, Condition] = {}
    variants: dict[str, tuple[Condition, ...]] = {}
    for origin, path, seg in segment_defs:
        c._current_refs = []
        matched[seg["name"]] = c.condition(seg["when"], origin, f"{path}.when")
        if seg.get("variants"):
            variants[seg["name"]] = tuple(
                c.condition(when, origin, f"{path}.when") for when in seg["variants"]
            )
        c.refs[seg["name"]] = c._current_refs
    groups = _Groups(c, matched)
    for origin, data in parts:
        for gi, group in enumerate(data["groups"]):
            groups.add(origin, f"groups[{gi}]", group)
    _check_grouped_variants(segment_defs, variants, groups.group_of)
    for origin, path, seg in segment_defs:
        name = seg["name"]
        cycle = _find_cycle(name, groups.deps)
        if cycle:
            where = next((p for r, p in c.refs[name] if r == cycle[1]), f"{path}.when")
            raise origin.error(where, "reference cycle: " + " → ".join(cycle))
    segments = tuple(
        Segment(
            name=seg["name"],
            condition=groups.effective[seg["name"]],
            matched=matched[seg["name"]],
            group=groups.group_of.get(seg["name"]),
            position=groups.position(seg["name"]),
            description=seg.get("description", ""),
            origin=origin.template or "",
            variants=variants.get(seg["name"], ()),
        )
        for origin, _, seg in segment_defs
    )
    properties = {event: frozenset(props) for event, props in c.properties.items()}
    return RuleSet(
        segments=segments,
        traits=tuple(traits),
        groups=groups.groups,
        raw=dict(raw),
        properties=properties,
        lookback=c.lookback if c.lookback else None,
        unbounded=c.unbounded,
        templates=used,
    )


__all__ = ["ANY_EVENT", "EMPTY", "RuleSet", "Segment", "compile_rules"]
