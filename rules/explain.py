"""Readable renderings of explanations (the structured form lives in ``Explanation.detail``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .model import Evaluation, Explanation
from .values import iso


def _line(node: Mapping[str, Any]) -> str:
    text = f"{node['condition']}: {node['result']}"
    if "value" in node and node.get("value") is not None and not isinstance(node.get("value"), bool):
        text += f" (value {node['value']!r})"
    if node.get("reason"):
        text += f" — {node['reason']}"
    if node.get("note"):
        text += f" — {node['note']}"
    if node.get("events"):
        shown = ", ".join(f"{e['name']} {e['id'] or '?'} at {e['at']}" for e in node["events"][:5])
        total = node.get("events_total", len(node["events"]))
        more = f" (+{total - 5} more)" if total > 5 else ""
        text += f"; events: {shown}{more}"
    if node.get("next_change"):
        exact = "" if node.get("next_change_exact", True) else " at the earliest"
        text += f"; may change at {node['next_change']}{exact}"
    return text


def reasons(tree: Mapping[str, Any], depth: int = 0) -> list[str]:
    """One line per condition, children indented by two spaces per level."""
    out = ["  " * depth + _line(tree)]
    for child in tree.get("children", ()):
        out.extend(reasons(child, depth + 1))
    return out


def render(explanation: Explanation) -> str:
    """A readable multi-line explanation of one segment."""
    state = "IN" if explanation.member else "OUT"
    head = f"{explanation.segment}: {state}"
    group = explanation.detail.get("group")
    if group:
        head += f" (exclusive group {group})"
    variant = explanation.detail.get("variant")
    if variant:
        head += f" (variant {variant})"
    if explanation.next_change is not None:
        head += f"; next change {iso(explanation.next_change)}"
        if not explanation.detail.get("next_change_exact", True):
            head += " at the earliest"
    else:
        head += "; no change without a new event"
    return "\n".join([head, *("  " + r for r in explanation.reasons)])


def render_evaluation(evaluation: Evaluation, segments: Iterable[str] | None = None) -> str:
    names = list(segments) if segments is not None else sorted(evaluation.explanations)
    blocks = [render(evaluation.explanations[n]) for n in names if n in evaluation.explanations]
    traits = ", ".join(f"{k}={v!r}" for k, v in sorted(evaluation.traits.items()))
    due = iso(evaluation.next_due) if evaluation.next_due else "never"
    return "\n\n".join([*blocks, f"traits: {traits or 'none'}\nnext due: {due}"])
