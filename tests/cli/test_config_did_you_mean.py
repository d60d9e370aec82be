"""``connector config validate DIR``: a mistyped name is reported at the path written in the file,
with the closest known name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from connector.cli.main import _register, cli

ENV = {"SEG_SECRET": "s3cr3t-value-for-tests", "MC_KEY": "0123456789abcdef0123456789abcdef-us6"}
MC = {"api_key_env": "MC_KEY", "list_id": "a1"}
SEGMENT = {"name": "x", "when": {"count": {"event": "a", "within": "5m", "gte": 1}}}
CONDITIONS = "all, always, any, avg, count, distinct, first, for_some, in_segment, last, max, min, not"
TEMPLATES = "activity, browse_abandonment, cart_abandonment, churn_risk, engagement, high_intent"


def validate(tmp_path: Path, data: object) -> str:
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump(data))
    _register()
    result = CliRunner().invoke(cli, ["config", "validate", str(tmp_path)], env=ENV)
    assert result.exit_code == 1, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("invalid: ")]
    prefix = f"invalid: {tmp_path / 'shop.yaml'}: "
    assert line.startswith(prefix), line
    return line[len(prefix) :]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"senders": {"segmnt": {"secret_env": "SEG_SECRET"}}},
         "senders.segmnt: unknown sender type `segmnt` (did you mean `segment`?); known: hubspot, klaviyo, "
         "mailchimp, mandrill, rudderstack, segment, shopify, standard_webhooks, tracking"),
        ({"destinations": {"mailchimpp": MC}},
         "destinations.mailchimpp: unknown destination type `mailchimpp` (did you mean `mailchimp`?); "
         "known: hubspot, klaviyo, mailchimp, webhook (or set `type:` to one of them)"),
        ({"destinations": {"crm": {"type": "hubspott", "api_key_env": "MC_KEY"}}},
         "destinations.crm.type: unknown destination type `hubspott` (did you mean `hubspot`?); "
         "known: hubspot, klaviyo, mailchimp, webhook"),
        ({"destinations": {"mailchimp": {**MC, "segments": {"x": {"variants": {"aa": {"tags": ["t"]}}}}}},
          "rules": {"segments": [SEGMENT]}},
         "destinations.mailchimp.segments.x.variants.aa: unknown variant `aa` (did you mean `a`?); "
         "known: a, b, c, d, e, f, g, h"),
        ({"rules": {"segmnts": []}}, "rules.segmnts: unknown field `segmnts` (did you mean `segments`?)"),
        ({"rules": {"segments": [{"name": "x", "when": {"cuont": SEGMENT["when"]["count"]}}]}},
         "rules.segments[0].when.cuont: unknown condition `cuont` (did you mean `count`?); "
         f"known: {CONDITIONS}"),
        ({"rules": {"segments": [{"name": "x", "when": {"count": {"event": "a", "withn": "5m", "gte": 1}}}]}},
         "rules.segments[0].when.count.withn: unknown field `withn` (did you mean `within`?)"),
        ({"rules": {"include": ["cart_abandonmnt"]}},
         f"rules.include[0]: unknown template `cart_abandonmnt` (did you mean `cart_abandonment`?); "
         f"known: {TEMPLATES}"),
        ({"rules": {"include": [{"template": "cart_abandonmnt"}]}},
         "rules.include[0].template: unknown template `cart_abandonmnt` (did you mean `cart_abandonment`?); "
         f"known: {TEMPLATES}"),
    ],
)  # fmt: skip
def test_a_typo_names_its_path_and_the_closest_known_name(
    tmp_path: Path, data: object, expected: str
) -> None:
    assert validate(tmp_path, data).startswith(expected)


def test_a_mistyped_required_key_is_not_also_reported_missing(tmp_path: Path) -> None:
    typo = {"name": "x", "when": {"count": {"evnt": "a", "gte": 1}}}
    assert validate(tmp_path, {"rules": {"segments": [typo]}}) == (
        "rules.segments[0].when.count.evnt: unknown field `evnt` (did you mean `event`?)"
    )
