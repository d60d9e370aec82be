"""Rule evaluation speed: bench/rules (the wrapper) runs this.

Generates PROFILES synthetic profiles (0-50 events each over up to 240 days: page and product views,
carts, checkouts, orders with revenue, email deliveries, opens and clicks), compiles every built-in
template (the run prints how many segments and computed traits) and measures, in one run:

1. the rules engine: a full re-evaluation of every profile (memberships, computed traits, next_due),
   as the worker does it (explain=False); and with explanations on a sample;
2. json-logic (panzi-json-logic, an interpreted rule engine) on a sample, with 25 of those segments
   (all but the six of the churn_risk and value_tiers templates, over predicted traits) written as
   json-logic rules over the profile's event list (group_by expanded over the known categories;
   json-logic has no next_due), memberships checked against the engine's;
3. DuckDB: one SQL query computing those 25 memberships for all profiles from an events table
   (the columnar ceiling; no next_due), membership counts checked against the engine's.

Numbers are indicative: the machine is shared. CPU time of this process is printed next to wall time.
The generated profiles are frozen out of the cyclic garbage collector (gc.freeze), as a worker holds one
profile at a time rather than millions of events.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rules import EventRecord, Profile, compile_rules, evaluate  # noqa: E402
from rules.templates import all_templates_rules  # noqa: E402

NOW = datetime(2024, 6, 1, tzinfo=UTC)
NOW_TS = NOW.timestamp()
DAY = 86400.0
NAMES = (
    ["page_viewed"] * 6
    + ["product_viewed"] * 6
    + ["add_to_cart"] * 2
    + ["checkout_started", "order_completed"]
    + ["email_delivered"] * 4
    + ["email_opened"] * 2
    + ["email_clicked"]
)
CATEGORIES = ("shoes", "hats", "bags", "toys")


def generate(count: int, seed: int) -> list[Profile]:
    rng = random.Random(seed)
    profiles = []
    for i in range(count):
        horizon = rng.choice((2, 10, 45, 120, 240)) * DAY
        events = []
        for k in range(rng.randint(0, 50)):
            name = rng.choice(NAMES)
            ago = int(rng.random() ** 2 * horizon)
            props: dict[str, Any] = {}
            if name == "product_viewed":
                props = {"category": rng.choice(CATEGORIES), "time_on_page": rng.randint(1, 90)}
            elif name == "order_completed":
                props = {"revenue": round(rng.uniform(5, 400), 2)}
            elif name == "add_to_cart":
                props = {"category": rng.choice(CATEGORIES)}
            events.append(EventRecord(name, NOW - timedelta(seconds=ago), props, f"{i}-{k}"))
        events.sort(key=lambda e: (e.occurred_at, e.event_id))
        profiles.append(Profile("bench", f"p{i}", events=events))
    return profiles


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


# -- json-logic: the same segments as the templates (defaults), over {"events": [...]} ----------------

V = {"var": "events"}
ACC, CUR = {"var": "accumulator"}, {"var": "current"}


def _f(name: str | None, within: float | None = None, older: float | None = None, *extra: Any) -> Any:
    terms: list[Any] = [] if name is None else [{"==": [{"var": "n"}, name]}]
    if within is not None:
        terms.append({">": [{"var": "ts"}, NOW_TS - within]})
    if older is not None:
        terms.append({"<=": [{"var": "ts"}, NOW_TS - older]})
    terms.extend(extra)
    return {"filter": [V, {"and": terms} if terms else True]}


def _count(name: str | None, within: float | None = None, older: float | None = None, *extra: Any) -> Any:
    return {"reduce": [_f(name, within, older, *extra), {"+": [ACC, 1]}, 0]}


def _sum(name: str, prop: str) -> Any:
    return {"reduce": [_f(name), {"+": [ACC, {"var": f"current.{prop}"}]}, 0]}


def _last(name: str | None, *extra: Any) -> Any:
    return {"reduce": [_f(name, None, None, *extra), {"max": [ACC, {"var": "current.ts"}]}, -1]}


def _first(name: str | None) -> Any:
    return {"reduce": [_f(name), {"min": [ACC, {"var": "current.ts"}]}, 1e12]}


def _older(ts: Any, age: float) -> Any:
    return {"and": [{">=": [ts, 0]}, {"<=": [ts, NOW_TS - age]}]}


def _abandoned(first: Any, then: str, gap: float, keep: float, absent: float) -> Any:
    # the last A, at least gap ago and less than keep ago; then no B in [A, A + absent): a reduce over
    # [A, B...] that carries A's time and turns it to -1 once a B falls in that interval (this json-logic
    # does not evaluate reduce's initial value, so A leads the list)
    cond = {
        "and": [
            {">=": [ACC, 0]},
            {">=": [{"var": "current.ts"}, ACC]},
            {"<": [{"var": "current.ts"}, {"+": [ACC, absent]}]},
        ]
    }
    none_after = {
        "reduce": [
            {"merge": [[first], _f(then)]},
            {"if": [{"==": [ACC, None]}, CUR, {"if": [cond, -1, ACC]}]},
            None,
        ]
    }
    return {
        "and": [
            {">=": [first, 0]},
            {">": [first, NOW_TS - keep]},
            {"<=": [{"+": [first, gap]}, NOW_TS]},
            {">=": [none_after, 0]},
        ]
    }


def _round2(x: Any) -> Any:
    y = {"+": [{"*": [x, 100]}, 0.5]}
    return {"/": [{"-": [y, {"%": [y, 1]}]}, 100]}


def _exclusive(raws: list[tuple[str, Any]]) -> dict[str, Any]:
    out = {}
    for i, (name, raw) in enumerate(raws):
        out[name] = {"and": [raw, *({"!": r} for _, r in raws[:i])]}
    return out


def json_logic_rules() -> dict[str, Any]:
    orders = _count("order_completed")
    last_order, last_any = _last("order_completed"), _last(None)
    email = {
        "min": [20, {"+": [_count("email_opened", 30 * DAY), {"*": [3, _count("email_clicked", 30 * DAY)]}]}]
    }
    web = {
        "min": [
            20,
            {
                "+": [
                    {"*": [0.5, _count("page_viewed", 30 * DAY)]},
                    _count("product_viewed", 30 * DAY),
                    {"*": [3, _count("add_to_cart", 30 * DAY)]},
                ]
            },
        ]
    }
    buy = {"min": [30, {"*": [10, _count("order_completed", 90 * DAY)]}]}
    score = _round2(
        {
            "/": [
                {
                    "*": [
                        10,
                        {
                            "+": [
                                {"*": [40, {"min": [{"/": [email, 20]}, 1]}]},
                                {"*": [35, {"min": [{"/": [web, 20]}, 1]}]},
                                {"*": [25, {"min": [{"/": [buy, 30]}, 1]}]},
                            ]
                        },
                    ]
                },
                100,
            ]
        }
    )
    revenue = _sum("order_completed", "revenue")
    delivered = _count("email_delivered", 30 * DAY)
    rules: dict[str, Any] = {}
    rules |= _exclusive(
        [
            ("recently_active", {">": [last_any, NOW_TS - 7 * DAY]}),
            ("moderately_active", {">": [last_any, NOW_TS - 30 * DAY]}),
            ("activity_at_risk", {">": [last_any, NOW_TS - 90 * DAY]}),
            ("activity_churned", _older(last_any, 90 * DAY)),
        ]
    )
    rules["browse_abandoner"] = _abandoned(
        _last("product_viewed", {">=": [{"var": "top"}, 30]}), "add_to_cart", 2 * 3600, 3 * DAY, 2 * 3600
    )
    # cart and checkout abandonment also end at the next order (within keep_for)
    rules["cart_abandoner"] = _abandoned(_last("add_to_cart"), "order_completed", 2 * DAY, 7 * DAY, 7 * DAY)
    rules["checkout_abandoner"] = _abandoned(
        _last("checkout_started"), "order_completed", DAY, 7 * DAY, 7 * DAY
    )
    rules |= _exclusive(
        [
            ("highly_engaged", {">=": [score, 7]}),
            ("engaged", {">=": [score, 4]}),
            ("lightly_engaged", {">=": [score, 1]}),
            ("unengaged", {"<": [score, 1]}),
        ]
    )
    rules["high_intent_category"] = {
        "or": [
            {">=": [_count("product_viewed", 600, None, {"==": [{"var": "category"}, c]}), 3]}
            for c in CATEGORIES
        ]
    }
    first_any = _first(None)
    rules |= _exclusive(
        [
            (
                "lifecycle_win_back",
                {
                    "and": [
                        {">=": [_count("order_completed", 30 * DAY), 1]},
                        {">=": [_count("order_completed", None, 30 * DAY), 1]},
                        {"==": [_count("order_completed", 90 * DAY, 30 * DAY), 0]},
                    ]
                },
            ),
            ("lifecycle_churned", _older(last_order, 180 * DAY)),
            ("lifecycle_at_risk", _older(last_order, 90 * DAY)),
            ("lifecycle_loyal", {">=": [orders, 5]}),
            ("lifecycle_developing", {">=": [orders, 2]}),
            ("lifecycle_first_time", {"==": [orders, 1]}),
            ("lifecycle_new", {"and": [{"<": [first_any, 1e12]}, {">": [first_any, NOW_TS - 30 * DAY]}]}),
        ]
    )
    rules["non_purchaser"] = {"==": [orders, 0]}
    rules["first_time_buyer"] = {"==": [orders, 1]}
    rules["repeat_buyer"] = {">=": [orders, 2]}
    rules["high_value_customer"] = {">=": [revenue, 500]}
    rules["re_engagement_candidate"] = {
        "and": [{">=": [delivered, 3]}, {"<": [{"/": [_count("email_opened", 30 * DAY), delivered]}, 0.1]}]
    }
    rules["vip"] = {">=": [revenue, 1000]}
    return rules


def as_json_data(profile: Profile) -> dict[str, Any]:
    events = []
    for e in profile.events:
        item: dict[str, Any] = {"n": e.name, "ts": e.occurred_at.timestamp()}
        p = e.properties
        if "revenue" in p:
            item["revenue"] = p["revenue"]
        if "category" in p:
            item["category"] = p["category"]
        if "time_on_page" in p:
            item["top"] = p["time_on_page"]
        events.append(item)
    return {"events": events}


# -- DuckDB: one query --------------------------------------------------------------------------------


def duckdb_sql() -> str:
    def ago(days: float) -> str:
        return repr(NOW_TS - days * DAY)

    return f"""
WITH agg AS (
  SELECT p.pid,
    count(e.pid) FILTER (WHERE e.name = 'order_completed') AS orders,
    coalesce(sum(e.revenue) FILTER (WHERE e.name = 'order_completed'), 0) AS revenue,
    count(e.pid) FILTER (WHERE e.name = 'order_completed' AND e.ts > {ago(30)}) AS orders_30,
    count(e.pid) FILTER (WHERE e.name = 'order_completed' AND e.ts <= {ago(30)}) AS orders_older_30,
    count(e.pid) FILTER (WHERE e.name = 'order_completed' AND e.ts > {ago(90)} AND e.ts <= {ago(30)})
      AS orders_30_90,
    count(e.pid) FILTER (WHERE e.name = 'order_completed' AND e.ts > {ago(90)}) AS orders_90,
    max(e.ts) FILTER (WHERE e.name = 'order_completed') AS last_order,
    min(e.ts) AS first_seen,
    max(e.ts) AS last_seen,
    count(e.pid) FILTER (WHERE e.name = 'email_opened' AND e.ts > {ago(30)}) AS opened_30,
    count(e.pid) FILTER (WHERE e.name = 'email_clicked' AND e.ts > {ago(30)}) AS clicked_30,
    count(e.pid) FILTER (WHERE e.name = 'email_delivered' AND e.ts > {ago(30)}) AS delivered_30,
    count(e.pid) FILTER (WHERE e.name = 'page_viewed' AND e.ts > {ago(30)}) AS pages_30,
    count(e.pid) FILTER (WHERE e.name = 'product_viewed' AND e.ts > {ago(30)}) AS products_30,
    count(e.pid) FILTER (WHERE e.name = 'add_to_cart' AND e.ts > {ago(30)}) AS carts_30,
    max(e.ts) FILTER (WHERE e.name = 'add_to_cart') AS last_cart,
    max(e.ts) FILTER (WHERE e.name = 'checkout_started') AS last_checkout,
    max(e.ts) FILTER (WHERE e.name = 'product_viewed' AND e.top >= 30) AS last_long_view
  FROM profiles p LEFT JOIN events e ON e.pid = p.pid
  GROUP BY p.pid
),
burst AS (
  SELECT pid, max(n) AS views FROM (
    SELECT pid, category, count(*) AS n FROM events
    WHERE name = 'product_viewed' AND ts > {NOW_TS - 600!r} GROUP BY pid, category
  ) GROUP BY pid
),
follow AS (
  SELECT a.pid,
    bool_or(e.name = 'order_completed' AND e.ts >= a.last_cart AND e.ts < a.last_cart + {7 * DAY})
      AS cart_ordered,
    bool_or(e.name = 'order_completed' AND e.ts >= a.last_checkout AND e.ts < a.last_checkout + {7 * DAY})
      AS checkout_ordered,
    bool_or(e.name = 'add_to_cart' AND e.ts >= a.last_long_view AND e.ts < a.last_long_view + 7200)
      AS view_carted
  FROM agg a JOIN events e ON e.pid = a.pid
  GROUP BY a.pid
),
scored AS (
  SELECT agg.*,
    round(10 * (40 * least(least(opened_30 + 3 * clicked_30, 20) / 20, 1)
              + 35 * least(least(0.5 * pages_30 + products_30 + 3 * carts_30, 20) / 20, 1)
              + 25 * least(least(10 * orders_90, 30) / 30, 1)) / 100, 2) AS score
  FROM agg
),
flags AS (
  SELECT s.*,
    CASE WHEN last_seen > {ago(7)} THEN 'recently_active'
         WHEN last_seen > {ago(30)} THEN 'moderately_active'
         WHEN last_seen > {ago(90)} THEN 'activity_at_risk'
         WHEN last_seen <= {ago(90)} THEN 'activity_churned' END AS activity,
    CASE WHEN score >= 7 THEN 'highly_engaged' WHEN score >= 4 THEN 'engaged'
         WHEN score >= 1 THEN 'lightly_engaged' ELSE 'unengaged' END AS engagement,
    CASE WHEN orders_30 >= 1 AND orders_older_30 >= 1 AND orders_30_90 = 0 THEN 'lifecycle_win_back'
         WHEN last_order <= {ago(180)} THEN 'lifecycle_churned'
         WHEN last_order <= {ago(90)} THEN 'lifecycle_at_risk'
         WHEN orders >= 5 THEN 'lifecycle_loyal'
         WHEN orders >= 2 THEN 'lifecycle_developing'
         WHEN orders = 1 THEN 'lifecycle_first_time'
         WHEN first_seen > {ago(30)} THEN 'lifecycle_new' END AS lifecycle,
    (last_cart > {ago(7)} AND last_cart + {2 * DAY} <= {NOW_TS!r} AND NOT coalesce(f.cart_ordered, false))
      AS cart_abandoner,
    (last_checkout > {ago(7)} AND last_checkout + {DAY} <= {NOW_TS!r}
      AND NOT coalesce(f.checkout_ordered, false)) AS checkout_abandoner,
    (last_long_view > {ago(3)} AND last_long_view + 7200 <= {NOW_TS!r} AND NOT coalesce(f.view_carted, false))
      AS browse_abandoner,
    coalesce(b.views >= 3, false) AS high_intent_category,
    (delivered_30 >= 3 AND opened_30 / delivered_30 < 0.1) AS re_engagement_candidate
  FROM scored s LEFT JOIN follow f ON f.pid = s.pid LEFT JOIN burst b ON b.pid = s.pid
)
SELECT
  count(*) FILTER (WHERE activity = 'recently_active') AS recently_active,
  count(*) FILTER (WHERE activity = 'moderately_active') AS moderately_active,
  count(*) FILTER (WHERE activity = 'activity_at_risk') AS activity_at_risk,
  count(*) FILTER (WHERE activity = 'activity_churned') AS activity_churned,
  count(*) FILTER (WHERE browse_abandoner) AS browse_abandoner,
  count(*) FILTER (WHERE cart_abandoner) AS cart_abandoner,
  count(*) FILTER (WHERE checkout_abandoner) AS checkout_abandoner,
  count(*) FILTER (WHERE engagement = 'highly_engaged') AS highly_engaged,
  count(*) FILTER (WHERE engagement = 'engaged') AS engaged,
  count(*) FILTER (WHERE engagement = 'lightly_engaged') AS lightly_engaged,
  count(*) FILTER (WHERE engagement = 'unengaged') AS unengaged,
  count(*) FILTER (WHERE high_intent_category) AS high_intent_category,
  count(*) FILTER (WHERE lifecycle = 'lifecycle_win_back') AS lifecycle_win_back,
  count(*) FILTER (WHERE lifecycle = 'lifecycle_churned') AS lifecycle_churned,
  count(*) FILTER (WHERE lifecycle = 'lifecycle_at_risk') AS lifecycle_at_risk,
  count(*) FILTER (WHERE lifecycle = 'lifecycle_loyal') AS lifecycle_loyal,
  count(*) FILTER (WHERE lifecycle = 'lifecycle_developing') AS lifecycle_developing,
  count(*) FILTER (WHERE lifecycle = 'lifecycle_first_time') AS lifecycle_first_time,
  count(*) FILTER (WHERE lifecycle = 'lifecycle_new') AS lifecycle_new,
  count(*) FILTER (WHERE orders = 0) AS non_purchaser,
  count(*) FILTER (WHERE orders = 1) AS first_time_buyer,
  count(*) FILTER (WHERE orders >= 2) AS repeat_buyer,
  count(*) FILTER (WHERE revenue >= 500) AS high_value_customer,
  count(*) FILTER (WHERE re_engagement_candidate) AS re_engagement_candidate,
  count(*) FILTER (WHERE revenue >= 1000) AS vip
FROM flags
"""


def run_duckdb(profiles: list[Profile], threads: int) -> tuple[dict[str, int], float, float, float]:
    import duckdb

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "events.csv")
        with open(path, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["pid", "name", "ts", "revenue", "category", "top"])
            for pid, profile in enumerate(profiles):
                for e in profile.events:
                    p = e.properties
                    writer.writerow(
                        [
                            pid,
                            e.name,
                            e.occurred_at.timestamp(),
                            p.get("revenue", ""),
                            p.get("category", ""),
                            p.get("time_on_page", ""),
                        ]
                    )
        con = duckdb.connect()
        con.execute(f"SET threads = {threads}")
        start = time.perf_counter()
        con.execute(
            "CREATE TABLE events AS SELECT * FROM read_csv(?, header = true, columns = {"
            "'pid': 'INTEGER', 'name': 'VARCHAR', 'ts': 'DOUBLE', 'revenue': 'DOUBLE', "
            "'category': 'VARCHAR', 'top': 'INTEGER'})",
            [path],
        )
        con.execute(f"CREATE TABLE profiles AS SELECT range AS pid FROM range({len(profiles)})")
        load = time.perf_counter() - start
    sql = duckdb_sql()
    row, query, query_cpu = timed(lambda: con.execute(sql).fetchone())
    assert row is not None
    names = [d[0] for d in con.description]
    con.close()
    return dict(zip(names, row, strict=True)), query, query_cpu, load


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--jsonlogic-sample", type=int, default=2_000)
    parser.add_argument("--explain-sample", type=int, default=1_000)
    parser.add_argument("--duckdb-threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    profiles, wall, _ = timed(lambda: generate(args.profiles, args.seed))
    events = sum(len(p.events) for p in profiles)
    # A worker holds one profile at a time; here millions of generated events stay alive, and the cyclic
    # garbage collector would rescan them over and over. Leave them out of it, as a worker's heap would be.
    gc.collect()
    gc.freeze()
    print(f"generated {len(profiles):,} profiles, {events:,} events in {wall:.1f}s", flush=True)
    ruleset = compile_rules(all_templates_rules())
    print(
        f"rules: {len(ruleset.segments)} segments, {len(ruleset.traits)} computed traits "
        f"({', '.join(ruleset.templates)})",
        flush=True,
    )

    def engine_all() -> list[Any]:
        return [evaluate(p, ruleset, NOW, explain=False) for p in profiles]

    evaluations, engine_wall, engine_cpu = timed(engine_all)
    engine_counts = Counter(s for e in evaluations for s in e.segments)
    due = sum(1 for e in evaluations if e.next_due is not None)
    print(
        f"engine: {len(profiles):,} profiles in {engine_wall:.2f}s wall, {engine_cpu:.2f}s CPU "
        f"({len(profiles) / engine_wall:,.0f}/s); {due:,} with a next_due",
        flush=True,
    )

    explain_sample = profiles[: args.explain_sample]
    _, explain_wall, explain_cpu = timed(lambda: [evaluate(p, ruleset, NOW) for p in explain_sample])
    print(
        f"engine with explanations: {len(explain_sample):,} in {explain_wall:.2f}s "
        f"({len(explain_sample) / explain_wall:,.0f}/s)",
        flush=True,
    )

    from json_logic import jsonLogic

    jl_rules = json_logic_rules()
    # the segments over predicted traits (churn_risk, value_tiers) have no json-logic counterpart: the
    # synthetic profiles carry no predictions, and memberships are compared over the others
    assert set(jl_rules) <= set(ruleset.segment_names), set(jl_rules) - set(ruleset.segment_names)
    sample = profiles[: args.jsonlogic_sample]
    data = [as_json_data(p) for p in sample]

    def jl_all() -> list[set[str]]:
        return [{name for name, rule in jl_rules.items() if jsonLogic(rule, d)} for d in data]

    jl_members, jl_wall, jl_cpu = timed(jl_all)
    _, same_wall, same_cpu = timed(lambda: [evaluate(p, ruleset, NOW, explain=False) for p in sample])
    agree = sum(
        1 for m, e in zip(jl_members, evaluations, strict=False) if m == set(e.segments) & set(jl_rules)
    )
    print(
        f"json-logic: {len(sample):,} in {jl_wall:.2f}s wall, {jl_cpu:.2f}s CPU "
        f"({len(sample) / jl_wall:,.1f}/s); engine on the same sample {same_wall:.2f}s; "
        f"same memberships for {agree}/{len(sample)} profiles",
        flush=True,
    )

    duck_counts, duck_query, duck_cpu, duck_load = run_duckdb(profiles, args.duckdb_threads)
    mismatched = {
        k: (engine_counts.get(k, 0), v) for k, v in duck_counts.items() if engine_counts.get(k, 0) != v
    }
    print(
        f"duckdb ({args.duckdb_threads} thread): query {duck_query:.2f}s (load {duck_load:.1f}s); "
        f"per-segment counts equal to the engine's: {not mismatched} {mismatched or ''}",
        flush=True,
    )

    print()
    print("| engine | profiles | wall | CPU | evaluations/s (CPU) | per evaluation (CPU) |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = [
        ("rules engine, explain=False (worker path)", len(profiles), engine_wall, engine_cpu),
        ("rules engine, with explanations", len(explain_sample), explain_wall, explain_cpu),
        ("rules engine, the json-logic sample", len(sample), same_wall, same_cpu),
        ("json-logic (panzi-json-logic)", len(sample), jl_wall, jl_cpu),
        (
            f"DuckDB, one SQL query ({args.duckdb_threads} thread, no next_due)",
            len(profiles),
            duck_query,
            duck_cpu,
        ),
    ]
    for label, count, wall_s, cpu_s in rows:
        per = cpu_s / count * 1e6
        print(
            f"| {label} | {count:,} | {wall_s:.2f} s | {cpu_s:.2f} s | {count / cpu_s:,.0f} | {per:,.0f} µs |"
        )
    print()
    print(
        f"engine vs json-logic per evaluation (same profiles): {jl_cpu / same_cpu:.0f}x faster in CPU time, "
        f"{jl_wall / same_wall:.0f}x in wall time"
    )
    print(
        f"full re-evaluation of {len(profiles):,} profiles: {engine_wall:.1f} s wall ({engine_cpu:.1f} s CPU)"
    )


if __name__ == "__main__":
    main()
