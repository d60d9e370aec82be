"""The console tests use the admin API's fixtures: two accounts with rules and a destination,
tokens per role, people applied through the worker's path."""

from __future__ import annotations

from tests.ops.api.conftest import api, api_accounts, api_app, api_clock, mint, people

__all__ = ["api", "api_accounts", "api_app", "api_clock", "mint", "people"]
