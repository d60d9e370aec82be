"""Clients for the ingest tests whose account files differ from the shared ACME one."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from tests.conftest import ACME, GLOBEX, write_accounts

SHOP = "example-shop.myshopify.com"


def client_with(settings: Any, directory: Path, **senders: dict[str, Any]) -> Any:
    """A test client whose ``acme`` account has these options merged into its senders."""
    from connector.app import create_app

    acme = copy.deepcopy(ACME)
    for name, options in senders.items():
        acme["senders"][name] = {**acme["senders"][name], **options}
    app = create_app(dataclasses.replace(settings, config_dir=write_accounts(directory, acme, GLOBEX)))
    app.config["TESTING"] = True
    return app.test_client()
