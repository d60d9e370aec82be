"""Built-in templates shipped in ``rules/templates/*.yaml``.

A template declares ``params:`` with defaults; its conditions use ``$name`` wherever a parameter goes.
An account includes it with ``include: [{template: NAME, params: {...}}]``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from . import yamltext
from .errors import RulesError


def parse_template_text(text: str, source: str = "template") -> dict[str, Any]:
    """Parse one template's YAML text (the only place rules/ reads YAML)."""
    try:
        data = yamltext.load(text)
    except yaml.YAMLError as err:
        raise RulesError(source, f"not valid YAML: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("template"), str):
        raise RulesError(source, "a template is a mapping with a 'template' name")
    return data


@lru_cache(maxsize=1)
def builtin_templates() -> dict[str, dict[str, Any]]:
    """Template name → parsed template, from the files shipped with the package."""
    found: dict[str, dict[str, Any]] = {}
    folder = resources.files(__package__).joinpath("templates")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = parse_template_text(entry.read_text(encoding="utf-8"), f"templates/{entry.name}")
            found[data["template"]] = data
    return found


def all_templates_rules() -> dict[str, Any]:
    """A ``rules:`` mapping that includes every built-in template with its defaults."""
    return {"include": sorted(builtin_templates())}
