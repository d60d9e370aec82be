"""Small inline SVG charts for the console (no script, no library)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup


def sparkline(values: Sequence[int], width: int = 120, height: int = 28) -> Markup:
    """A polyline of ``values`` scaled to the box; a flat line when they are all equal."""
    if not values:
        return Markup("")
    low, high = min(values), max(values)
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
