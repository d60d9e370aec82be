"""``connector sandbox serve`` (the three fake ESPs, one process) and ``connector sandbox show``."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

import click
import httpx
import yaml


def register(cli: click.Group) -> None:
    cli.add_command(sandbox)


def _ports(mailchimp: int, hubspot: int, klaviyo: int) -> dict[str, int]:
    return {"mailchimp": mailchimp, "hubspot": hubspot, "klaviyo": klaviyo}


def _port_options(fn: Any) -> Any:
    from connector.dev.sandbox import DEFAULT_PORTS

    for esp in ("klaviyo", "hubspot", "mailchimp"):
        fn = click.option(
            f"--{esp}-port", default=DEFAULT_PORTS[esp], show_default=True, help=f"Port of the fake {esp}."
        )(fn)
    return click.option("--host", default="127.0.0.1", show_default=True)(fn)


def _looked_up_port_options(fn: Any) -> Any:
    from connector.dev.sandbox import DEFAULT_PORTS

    for esp in ("klaviyo", "hubspot", "mailchimp"):
        fn = click.option(
            f"--{esp}-port",
            type=int,
            default=None,
            help=f"Port of the fake {esp} [default: the running `connector dev`'s, "
            f"else {DEFAULT_PORTS[esp]}]",
        )(fn)
    return click.option("--host", default="127.0.0.1", show_default=True)(fn)


def _ports_in_use(given: dict[str, int | None]) -> dict[str, int]:
    """The ports given; for the others, those of the sandbox the running ``connector dev`` started
    (``--sandbox-ports``), else the defaults."""
    from connector.dev import devenv
    from connector.dev.sandbox import DEFAULT_PORTS

    running = devenv.running_dev()
    started = running.sandbox_ports if running is not None and running.sandbox_ports else {}
    return {esp: port or started.get(esp) or DEFAULT_PORTS[esp] for esp, port in given.items()}


@click.group()
def sandbox() -> None:
    """Fake Mailchimp, HubSpot and Klaviyo servers on loopback (no ESP account needed)."""


@sandbox.command("serve")
@_port_options
@click.option(
    "--list",
    "lists",
    multiple=True,
    help="Create a list (HubSpot MANUAL list, Klaviyo list, Mailchimp tag) with this name. Repeatable.",
)
def serve(
    host: str, mailchimp_port: int, hubspot_port: int, klaviyo_port: int, lists: tuple[str, ...]
) -> None:
    """Run the three fakes until interrupted; print how to point an account at them."""
    from connector.dev.sandbox.process import ENV, start_sandbox

    try:
        running = start_sandbox(host, _ports(mailchimp_port, hubspot_port, klaviyo_port), lists)
    except OSError as err:
        click.echo(f"cannot start the sandbox on {host}: {err.strerror or err}", err=True)
        sys.exit(1)
    for esp in ("mailchimp", "hubspot", "klaviyo"):
        click.echo(f"{esp:<10} {running.base_url(esp)}")
    click.echo("\nCredentials the fakes accept (export them for the connector):")
    for name, value in ENV.items():
        click.echo(f"  export {name}={value}")
    click.echo("\nDestinations for an account file (segments map to the lists created with --list):")
    click.echo(yaml.safe_dump({"destinations": running.destinations()}, sort_keys=False).rstrip())
    click.echo(
        "\n`connector sandbox show` prints what the fakes hold. Ctrl-C stops them (state is in memory)."
    )
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        running.stop()
        click.echo("sandbox stopped")


def _line(email: str, details: list[str]) -> str:
    return f"    {email}  " + "  ".join(d for d in details if d)


def _fields(values: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    shown = {k: v for k, v in values.items() if k not in skip and v not in ("", None, [], {})}
    return "fields: " + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) if shown else ""


def _show_mailchimp(state: dict[str, Any]) -> list[str]:
    out = []
    for list_id, audience in state.get("lists", {}).items():
        members = audience.get("members", {})
        out.append(f"  audience {list_id}: {len(members)} member(s); tags: {len(audience.get('tags', {}))}")
        for email, m in members.items():
            tags = ", ".join(m.get("tags", [])) or "-"
            out.append(
                _line(
                    email, [f"status={m.get('status')}", f"tags: {tags}", _fields(m.get("merge_fields", {}))]
                )
            )
    return out


def _show_hubspot(state: dict[str, Any]) -> list[str]:
    out = [
        "  lists: "
        + (", ".join(f"{n} ({v['listId']}, {v['size']})" for n, v in state.get("lists", {}).items()) or "-")
    ]
    contacts = state.get("contacts", {})
    out.append(f"  {len(contacts)} contact(s)")
    for email, c in contacts.items():
        props = c.get("properties", {})
        tags = props.get("esp_tags", "") or "-"
        lists = ", ".join(c.get("lists", [])) or "-"
        out.append(
            _line(
                email,
                [
                    f"id={c.get('id')}",
                    f"esp_tags: {tags}",
                    f"lists: {lists}",
                    _fields(props, ("email", "esp_tags")),
                ],
            )
        )
    return out


def _show_klaviyo(state: dict[str, Any]) -> list[str]:
    out = [
        "  lists: "
        + (", ".join(f"{n} ({v['id']}, {v['size']})" for n, v in state.get("lists", {}).items()) or "-")
    ]
    profiles = state.get("profiles", {})
    out.append(f"  {len(profiles)} profile(s)")
    for email, p in profiles.items():
        props = p.get("properties", {})
        tags = ", ".join(str(t) for t in props.get("esp_tags", [])) or "-"
        lists = ", ".join(p.get("lists", [])) or "-"
        out.append(
            _line(
                email,
                [f"id={p.get('id')}", f"esp_tags: {tags}", f"lists: {lists}", _fields(props, ("esp_tags",))],
            )
        )
    events = state.get("events", [])
    if events:
        out.append("  last events: " + ", ".join(f"{e['metric']} ({e.get('email')})" for e in events[-5:]))
    return out


@sandbox.command("show")
@_looked_up_port_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw state of each fake as JSON.")
def show(
    host: str, mailchimp_port: int | None, hubspot_port: int | None, klaviyo_port: int | None, as_json: bool
) -> None:
    """Print what each fake ESP holds: members, contacts and profiles with tags, lists and fields.
    Without port options, the fakes of the running `connector dev` (its --sandbox-ports)."""
    from connector.dev.sandbox.process import fetch_state

    ports = _ports_in_use({"mailchimp": mailchimp_port, "hubspot": hubspot_port, "klaviyo": klaviyo_port})
    states: dict[str, Any] = {}
    missing = []
    for esp, port in ports.items():
        url = f"http://{host}:{port}"
        try:
            states[esp] = fetch_state(url)
        except (httpx.HTTPError, ValueError) as err:
            missing.append(esp)
            states[esp] = {"error": f"not reachable at {url} ({type(err).__name__})"}
    if as_json:
        click.echo(json.dumps(states, indent=2, sort_keys=True))
    else:
        render = {"mailchimp": _show_mailchimp, "hubspot": _show_hubspot, "klaviyo": _show_klaviyo}
        for esp, state in states.items():
            click.echo(f"{esp} ({host}:{ports[esp]})")
            if "error" in state:
                click.echo(f"  {state['error']}: start it with `connector sandbox serve`")
                continue
            for line in render[esp](state):
                click.echo(line)
    if len(missing) == len(ports):
        sys.exit(1)
