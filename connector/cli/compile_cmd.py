"""``connector compile``: the worker's hot modules compiled to C with mypyc (rules/compiled.py)."""

from __future__ import annotations

import sys
import time

import click

from rules import compiled


def register(cli: click.Group) -> None:
    @cli.command("compile")
    @click.option("--check", is_flag=True, help="only say whether a build is in use, and why")
    @click.option("--quiet", is_flag=True, help="print nothing when it works")
    @click.option("--if-stale", is_flag=True, help="only when no build matches the sources")
    def compile_cmd(check: bool, quiet: bool, if_stale: bool) -> None:
        """Compile the rule engine and the profile store's hot modules with mypyc into build/compiled/
        (needs mypy, from the dev or fast extra, and a C compiler). Processes started afterwards use
        the build while it matches the sources; edit one and they run plain Python until it is built
        again."""
        found = compiled.status()
        if check:
            click.echo(f"compiled modules {'in use' if found['active'] else 'not in use'}: {found['reason']}")
            return
        if if_stale and compiled.fresh():
            return
        try:
            import mypyc  # noqa: F401
        except ImportError:
            click.echo(
                "connector compile needs mypy (pip install -e '.[fast]'): plain Python is used meanwhile",
                err=True,
            )
            sys.exit(2)
        started = time.monotonic()
        if not quiet:
            click.echo(f"compiling {len(compiled.MODULES)} modules with mypyc (about a minute)...", err=True)
        try:
            manifest = compiled.build()
        except (RuntimeError, OSError) as err:
            click.echo(f"connector compile failed, plain Python is used meanwhile: {err}", err=True)
            sys.exit(1)
        if not quiet:
            click.echo(
                f"compiled {len(manifest['modules'])} modules into {compiled.BUILD_DIR} "
                f"in {time.monotonic() - started:.0f} s",
                err=True,
            )
