"""The ``connector`` command. Each concern adds its commands from ``connector/commands/``."""

from __future__ import annotations

import sys

import click
import redis

from connector import runtime as process_runtime
from connector.errors import ConfigError
from connector.runtime import Runtime
from connector.settings import Settings


@click.group()
@click.version_option(package_name="segment-connector", prog_name="connector")
def cli() -> None:
    """Behavioral-segmentation connector."""


def _register() -> None:
    from connector.cli import (
        analytics_cmd,
        compile_cmd,
        config_cmd,
        dlq_cmd,
        events_cmd,
        import_cmd,
        predict_cmd,
        profiles_cmd,
        rules_cmd,
        run_cmd,
        sandbox_cmd,
        segments_cmd,
        sign_cmd,
        tokens_cmd,
    )

    for module in (
        config_cmd,
        run_cmd,
        sign_cmd,
        dlq_cmd,
        rules_cmd,
        profiles_cmd,
        events_cmd,
        import_cmd,
        sandbox_cmd,
        segments_cmd,
        analytics_cmd,
        tokens_cmd,
        predict_cmd,
        compile_cmd,
    ):
        module.register(cli)


def _build_runtime() -> Runtime:
    """The CLI's runtime; it says on stderr which config directory and which Redis it uses."""
    settings = Settings.from_env()
    click.echo(f"connector: {settings.describe()}", err=True)
    return Runtime.from_settings(settings)


def main() -> None:
    from connector.dev.devenv import apply_dev_env

    apply_dev_env()  # the sample account's generated secrets, when `connector dev` made them here
    # the process's runtime, built on first use from the environment (commands that need no Redis
    # or accounts never build it)
    process_runtime.install_lazily(_build_runtime)
    _register()
    try:
        cli(standalone_mode=True)
    except ConfigError as err:
        click.echo(f"config error: {err}", err=True)
        sys.exit(2)
    except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError) as err:
        click.echo(f"Error: Redis unavailable ({type(err).__name__}: {err})", err=True)  # never a traceback
        sys.exit(1)
