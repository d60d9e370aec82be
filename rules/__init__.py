"""The rule language: parse, validate, compile, evaluate. Pure: takes a profile and now.

Entry points: :func:`compile_rules` (at load, raises :class:`RulesError` with the path), :func:`evaluate`
(profile, rule set, now → Evaluation), :func:`diff` (entered / exited segments, changed traits),
:func:`render` (a readable explanation).
"""

from . import compiled

compiled.activate()  # before any module it may load compiled (rules/compiled.py)

from .compile import EMPTY, RuleSet, Segment, compile_rules
from .durations import format_duration, parse_duration
from .errors import RulesError
from .evaluate import EvaluationDiff, diff, evaluate
from .explain import render, render_evaluation
from .model import Evaluation, EventRecord, Explanation, Profile
from .templates import builtin_templates, parse_template_text

__all__ = [
    "EMPTY",
    "Evaluation",
    "EvaluationDiff",
    "EventRecord",
    "Explanation",
    "Profile",
    "RuleSet",
    "RulesError",
    "Segment",
    "builtin_templates",
    "compile_rules",
    "diff",
    "evaluate",
    "format_duration",
    "parse_duration",
    "parse_template_text",
    "render",
    "render_evaluation",
]
