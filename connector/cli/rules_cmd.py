"""``connector rules validate FILE``: check a rules file, an account file's ``rules:`` or a template."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import yaml

from connector.config import not_utf8
from rules import RulesError, RuleSet, compile_rules, yamltext

ACCOUNT_KEYS = ("account", "senders", "rules", "destinations", "retention", "identity")


def check_rules_file(path: Path) -> RuleSet:
    """Compile the rules in ``path``; raise RulesError whose path starts with the file's own structure."""
    try:
        raw = yamltext.load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise RulesError(where, f"not valid YAML: {getattr(err, 'problem', err)}") from err
    except OSError as err:
        raise RulesError("", f"cannot read: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise RulesError("", not_utf8(err)) from err
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RulesError("", "must be a mapping (a rules file, an account file or a template)")
    if "template" in raw:
        name = str(raw["template"])
        return compile_rules({"include": [name]}, templates={name: raw})
    if any(key in raw for key in ACCOUNT_KEYS):
        section: Any = raw.get("rules") or None
        try:
            return compile_rules(section)
        except RulesError as err:
            raise err.prefixed("rules") from err
    return compile_rules(raw)


def register(cli: click.Group) -> None:
    @cli.group("rules")
    def rules_group() -> None:
        """Segmentation rules."""

    @rules_group.command("validate")
    @click.argument("file", type=click.Path(path_type=Path))
    def validate(file: Path) -> None:
        """Check FILE (a rules file, an account file or a template) without starting anything."""
        try:
            ruleset = check_rules_file(file)
        except RulesError as err:
            where = f"{err.path}: " if err.path else ""
            click.echo(f"{file}: {where}{err.reason}", err=True)
            sys.exit(1)
        names = ", ".join(ruleset.segment_names) or "none"
        click.echo(
            f"{file}: ok: {len(ruleset.segments)} segments ({names}), {len(ruleset.traits)} computed traits, "
            f"{len(ruleset.groups)} exclusive groups"
        )
