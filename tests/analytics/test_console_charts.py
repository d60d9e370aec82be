"""The console's analytics: on a segment's page the entries and exits per day and the conversion of
each arm against the control (inline SVG), on the segments page the migration matrix of each
exclusive group; read through the admin API."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis

from connector.ops.console.charts import arm_bars, day_bars
from tests.ops.api.conftest import api_clock, mint
from tests.ops.api.test_analytics_api import GROUP, _fill, app
from tests.ops.console.test_console import login

__all__ = ["api_clock", "app", "mint"]


def test_day_bars_scale_entries_up_and_exits_down() -> None:
    svg = str(day_bars([0, 4, 2], [1, 0, 0], width=30, height=22))
    assert svg.count('class="good"') == 3 and svg.count('class="bad"') == 3
    assert 'height="10.0"' in svg  # the peak (4) fills the upper half less the middle line
    assert "entered 6, exited 1 over 3 days" in svg
    assert str(day_bars([], [])) == ""


def test_arm_bars_name_each_arm_and_its_rate() -> None:
    svg = str(
        arm_bars(
            {"c": {"conversion_rate": 0.1}, "t": {"conversion_rate": 0.25}, "b": {"conversion_rate": None}}
        )
    )
    assert ">control<" in svg and ">treated<" in svg and ">variant b<" in svg
    assert ">25.0%<" in svg and ">10.0%<" in svg and ">0.0%<" in svg


@pytest.fixture
def viewer(app: Any, mint: Any, redis_client: redis.Redis) -> Any:
    """A console client logged in as a viewer of acme, with a month of segment analytics."""
    _fill(redis_client)
    client = app.test_client()
    login(client, mint("viewer", "acme"))
    return client


def test_the_segment_page_shows_movement_and_the_holdout(viewer: Any) -> None:
    client = viewer
    page = client.get("/console/a/acme/segments/cart_abandoner").get_data(as_text=True)
    holdout = page[page.index('id="holdout"') :]
    assert "control" in holdout and "treated" in holdout and "too few members" in holdout
    assert re.search(r"treated vs control: [+-][0-9.]+ pts\s+\[", holdout)
    movement_part = page[page.index('id="movement"') : page.index('id="holdout"')]
    assert "entered 300, exited 0 over 30 days" in movement_part


def test_the_segments_page_shows_the_migration_matrix(viewer: Any) -> None:
    client = viewer
    page = client.get("/console/a/acme/segments").get_data(as_text=True)
    table = page[page.index('data-group="lifecycle"') :]
    rows = re.findall(r"<tr><th>(.*?)</th>(.*?)</tr>", table, re.S)
    cells = {name: re.findall(r'<td class="num">(.*?)</td>', rest) for name, rest in rows}
    column = {t: i for i, t in enumerate(GROUP)}
    assert cells["outside"][column["lifecycle_at_risk"]] == "5"
    assert cells["lifecycle_at_risk"][column["lifecycle_churned"]] == "2"
    assert cells["lifecycle_loyal"][column["lifecycle_churned"]] == ""
