"""Small inline SVG charts for the console (no script, no library)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup, escape


def sparkline(values: Sequence[int], width: int = 120, height: int = 28, from_zero: bool = False) -> Markup:
    """A polyline of ``values`` scaled to the box (from 0 with ``from_zero``, so a change of 2 in 100 looks
    like one); a flat line when they are all equal."""
    if not values:
        return Markup("")
    low, high = (0 if from_zero else min(values)), max(values)
    span = (high - low) or 1
    step = width / max(len(values) - 1, 1)
    pad = 2
    points = " ".join(
        f"{i * step:.1f},{pad + (height - 2 * pad) * (1 - (v - low) / span):.1f}"
        for i, v in enumerate(values)
    )
    title = f"from {values[0]} to {values[-1]} (low {low}, high {high})"
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{title}"><title>{title}</title>'
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{points}"/></svg>'
    )


def day_bars(entered: Sequence[int], exited: Sequence[int], width: int = 360, height: int = 60) -> Markup:
    """Entries (up, green) and exits (down, red) per day around a middle line."""
    if not entered:
        return Markup("")
    top = max([*entered, *exited, 1])
    middle, step = height / 2, width / len(entered)
    bars = []
    for i, (came, left) in enumerate(zip(entered, exited, strict=False)):
        x, up, down = i * step, (middle - 1) * came / top, (middle - 1) * left / top
        box = f'x="{x:.1f}" width="{max(step - 1, 1):.1f}"'
        bars.append(
            f'<rect class="good" {box} y="{middle - up:.1f}" height="{up:.1f}"/>'
            f'<rect class="bad" {box} y="{middle:.1f}" height="{down:.1f}"/>'
        )
    title = f"entered {sum(entered)}, exited {sum(exited)} over {len(entered)} days (peak {top} a day)"
    return Markup(
        f'<svg class="bars" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{title}"><title>{title}</title>'
        f'<line x1="0" x2="{width}" y1="{middle}" y2="{middle}" stroke="currentColor" stroke-width="0.5"/>'
        f"{''.join(bars)}</svg>"
    )


def arm_bars(arms: Mapping[str, Mapping[str, Any]], width: int = 360) -> Markup:
    """Conversion rate of each arm (control ``c``, treated ``t``, variants ``a``, ``b`` ...) as
    horizontal bars, the rate written beside each."""
    rates = {arm: perf.get("conversion_rate") or 0.0 for arm, perf in arms.items()}
    if not rates:
        return Markup("")
    top, row, label = max([*rates.values(), 1e-9]), 18, 40
    written = 56  # room after the longest bar for its rate ("100.0%")
    rows = []
    for i, (arm, rate) in enumerate(sorted(rates.items())):
        length = (width - label - 30 - written) * rate / top
        name = escape(arm_name(arm))
        rows.append(
            f'<text x="0" y="{i * row + 13}">{name}</text>'
            f'<rect x="{label + 30}" y="{i * row + 3}" width="{length:.1f}" height="{row - 6}" class="arm"/>'
            f'<text x="{label + 34 + length:.1f}" y="{i * row + 13}">{rate * 100:.1f}%</text>'
        )
    height = row * len(rates)
    title = "conversion rate: " + ", ".join(f"{escape(a)} {r * 100:.1f}%" for a, r in sorted(rates.items()))
    return Markup(
        f'<svg class="arms" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{title}"><title>{title}</title>{"".join(rows)}</svg>'
    )


ARM_NAMES = {"c": "control", "t": "treated"}


def arm_name(arm: str) -> str:
    """An arm as the pages write it: ``control``, ``treated``, ``variant a`` ..."""
    return ARM_NAMES.get(arm, f"variant {arm}")
