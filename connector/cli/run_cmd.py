"""``connector dev`` (everything, locally), ``connector worker``, ``connector scheduler``,
``connector sync``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

import click
import yaml

from connector import runtime as process_runtime
from connector.dev import devenv
from connector.dev.embedded_redis import EmbeddedRedis
from connector.settings import EMBEDDED_REDIS_ENV, SEEDED_CONFIG_ENV, Settings


def register(cli: click.Group) -> None:
    cli.add_command(dev)
    cli.add_command(worker)
    cli.add_command(scheduler)
    cli.add_command(sync)


# The queues a worker can serve, in the order to serve them: a flush (short: it does not wait
# through a batch delay while other jobs wait) before the next turn of an event drain, which gives
# the worker up after half a second; predictions (a training holds its worker for its whole run) last.
WORKER_QUEUES = ("reevaluate", "sync", "events", "backfill", "predict")
# What `connector worker` serves by default: the flushes are the `connector sync` process's (a thread
# per destination), so they never wait behind a drain or a re-evaluation. A deployment without that
# process adds `sync` (--queues reevaluate,sync,events,backfill,predict).
DEFAULT_WORKER_QUEUES = tuple(name for name in WORKER_QUEUES if name != "sync")


@click.command()
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@click.option(
    "--queues",
    default=",".join(DEFAULT_WORKER_QUEUES),
    show_default=True,
    help="The queues this worker serves, in order (e.g. a dedicated worker: --queues predict; "
    "without a `connector sync` process: reevaluate,sync,events,backfill,predict).",
)
def worker(burst: bool, queues: str) -> None:
    """RQ worker for stored events, re-evaluations, backfills and predictions (no fork per job: each
    job is a batch). While Redis is out of reach, at start or later, it waits for it with backoff."""
    from connector.ops.logs import configure_logging
    from connector.settings import redact
    from connector.sync.runner import RedisOutage
    from connector.worker import jobs, serving

    names = [name.strip() for name in queues.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKER_QUEUES]
    if unknown or not names:
        hint = f"known queues: {', '.join(WORKER_QUEUES)}"
        raise click.BadParameter(
            f"unknown queue {', '.join(unknown) or '(none given)'}; {hint}", param_hint="--queues"
        )
    configure_logging()
    _say_compiled()
    jobs.serve_queues(names)  # a drain gives its turn up only to work this worker would take
    rt = process_runtime.current()  # RQ jobs run on this process's runtime
    jobs.settle_heap()
    outage = RedisOutage("worker", serving.log, redis=redact(rt.settings.queue_redis_url))
    serving.run(rt.queue_redis, names, threading.Event(), burst=burst, outage=outage)


def _say_compiled() -> None:
    """Whether the worker runs on the compiled hot modules (rules/compiled.py); a warning when not,
    since its CPU per event is then higher (a median 16 % lower compiled)."""
    import logging

    from rules import compiled

    found = compiled.status()
    log = logging.getLogger("connector.worker")
    if found["active"]:
        log.info("compiled hot modules in use", extra={"modules": len(found["modules"])})
    else:
        reason = found["reason"]
        log.warning("worker on plain Python: connector compile makes it faster", extra={"reason": reason})


@click.command()
@click.option(
    "--threads",
    default=16,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Destinations flushed at once (one thread each; the others wait their turn).",
)
def sync(threads: int) -> None:
    """Pushes changes to the ESPs: every destination in a thread of its own, batch by batch."""
    from connector.ops.logs import configure_logging
    from connector.sync import runner

    configure_logging()
    runner.run(threads=threads)


@click.command()
def scheduler() -> None:
    """Re-arms event drains and fires time-based re-evaluations when they fall due."""
    from connector.ops.logs import configure_logging
    from connector.worker import scheduler as sched

    configure_logging()
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sched.run(process_runtime.current(), stop)


# Segments of the sample account that the sandbox mirrors as lists (and tags) in each fake ESP.
SANDBOX_LISTS = ("cart_abandoner", "checkout_abandoner", "vip")


def _seed_config(data_dir: Path, destinations: dict[str, Any] | None = None) -> Path:
    """Write the sample account once (later runs keep the file, and any edits to it, except that
    destinations pointing at this sandbox get ``sandbox: true`` when they lack it)."""
    target = data_dir / "accounts"
    target.mkdir(parents=True, exist_ok=True)
    sample = resources.files("connector.dev") / "sample" / "demo.yaml"
    dest = target / "demo.yaml"
    if not dest.exists():
        text = sample.read_text()
        if destinations:
            text += yaml.safe_dump({"destinations": destinations}, sort_keys=False)
        dest.write_text(text)
    elif destinations:
        text = dest.read_text()
        urls = {cfg["base_url"] for cfg in destinations.values() if cfg.get("base_url")}
        marked = devenv.mark_sandbox_destinations(text, urls)
        if marked != text:
            dest.write_text(marked)
    return target


def _start_sandbox(ports: dict[str, int]) -> Any:
    from connector.dev.sandbox.process import ENV, start_sandbox

    for port in ports.values():
        if port:
            _check_port(port, "--sandbox-ports (or --no-sandbox)")
    try:
        sandbox = start_sandbox(ports=ports, lists=SANDBOX_LISTS)
    except OSError as err:
        raise click.ClickException(
            f"cannot start the sandbox ESPs on ports {ports['mailchimp']},{ports['hubspot']},"
            f"{ports['klaviyo']}: {err.strerror or err} (another `connector dev` running? pick other "
            "ports with --sandbox-ports, or turn them off with --no-sandbox)"
        ) from err
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    # in dev.env too: every other command reads it, and sees the keys this run's processes use
    devenv.record_dev_env({key: os.environ[key] for key in ENV})
    for esp in ("mailchimp", "hubspot", "klaviyo"):
        click.echo(f"sandbox {esp:<9} {sandbox.base_url(esp)}")
    return sandbox


@click.command()
@click.option("--port", default=8000, show_default=True, help="Port of the web process.")
@click.option("--web-workers", default=2, show_default=True)
@click.option(
    "--sandbox/--no-sandbox",
    default=True,
    show_default=True,
    help="Run fake Mailchimp, HubSpot and Klaviyo servers on loopback for the sample account.",
)
@click.option("--sandbox-ports", default="8901,8902,8903", show_default=True, metavar="MC,HS,KL",
              help="Ports of the fake Mailchimp, HubSpot and Klaviyo.")  # fmt: skip
def dev(port: int, web_workers: int, sandbox: bool, sandbox_ports: str) -> None:
    """Run web + worker + scheduler + sync locally, with an embedded Redis unless REDIS_URL is set."""
    from connector.config import load_accounts

    try:
        mc, hs, kl = (int(p) for p in sandbox_ports.split(","))
    except ValueError:
        hint = "--sandbox-ports"
        raise click.BadParameter("three port numbers, e.g. 8901,8902,8903", param_hint=hint) from None
    data_dir = devenv.data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    running = devenv.running_dev()
    if running is not None:
        raise click.ClickException(
            f"a connector dev (pid {running.pid}) is already running from {data_dir.resolve()}; stop it, "
            "or give this one its own CONNECTOR_DATA_DIR, --port and --sandbox-ports"
        )
    _check_port(port, "--port")
    devenv.ensure_dev_env()
    devenv.apply_dev_env()
    fakes = _start_sandbox({"mailchimp": mc, "hubspot": hs, "klaviyo": kl}) if sandbox else None
    try:
        if not os.environ.get("CONNECTOR_CONFIG_DIR"):
            _seed_config(data_dir, fakes.destinations() if fakes else None)
            os.environ["CONNECTOR_CONFIG_DIR"] = str(devenv.config_dir().resolve())
            os.environ[SEEDED_CONFIG_ENV] = os.environ["CONNECTOR_CONFIG_DIR"]
        # Invalid account files stop start-up before anything else is started.
        accounts = load_accounts(Path(os.environ["CONNECTOR_CONFIG_DIR"]))
        fake_ports = {"mailchimp": mc, "hubspot": hs, "klaviyo": kl} if fakes is not None else None
        code = _run_with_redis(data_dir, port, web_workers, [a.id for a in accounts], fake_ports)
    finally:
        if fakes is not None:
            fakes.stop()
    sys.exit(code)


def _check_port(port: int, flag: str) -> None:
    """Refuse a port something already listens on, naming the flag that picks another."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise click.ClickException(
                f"port {port} is in use ({err.strerror or err}): pick another with {flag}"
            ) from None


def _run_with_redis(
    data_dir: Path,
    port: int,
    web_workers: int,
    account_ids: list[str],
    sandbox_ports: dict[str, int] | None = None,
) -> int:
    """Start the embedded Redis unless REDIS_URL is set, record this run in ``dev.json`` for the
    other commands, supervise the processes, and clean up."""
    embedded: EmbeddedRedis | None = None
    if not os.environ.get("REDIS_URL"):
        embedded = EmbeddedRedis(data_dir / "redis").start()
        os.environ["REDIS_URL"] = os.environ[EMBEDDED_REDIS_ENV] = embedded.url
        click.echo(f"embedded redis: {embedded.url} (data in {data_dir / 'redis'})")
    try:
        settings = Settings.from_env()  # invalid settings stop start-up here
        click.echo(f"connector dev: {settings.describe()}")
        web = f"http://127.0.0.1:{port}"
        state = devenv.write_state(os.environ["REDIS_URL"], settings.config_dir, web, sandbox_ports)
        click.echo(f"other commands find this run through {state.resolve()}")
        return _supervise(port, web_workers, account_ids)
    finally:
        devenv.clear_state()
        if embedded is not None:
            embedded.stop()
            click.echo("embedded redis stopped")


def _supervise(port: int, web_workers: int, account_ids: list[str]) -> int:
    """Run the Procfile's processes until Ctrl-C/SIGTERM or one of them dies; stop them all."""
    exe = Path(sys.executable).parent
    gunicorn = (
        str(exe / "gunicorn") if (exe / "gunicorn").exists() else shutil.which("gunicorn") or "gunicorn"
    )
    connector = str(exe / "connector") if (exe / "connector").exists() else "connector"
    commands = {
        "web": [
            gunicorn, "--config", "python:connector.ops.gunicorn_conf",
            "--bind", f"127.0.0.1:{port}", "connector.app:create_app()",
        ],
        "worker": [connector, "worker"],
        "scheduler": [connector, "scheduler"],
        "sync": [connector, "sync"],
    }  # fmt: skip
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    children: dict[str, subprocess.Popen[bytes]] = {}
    code = 0
    try:
        for name, cmd in commands.items():
            # Own sessions: Ctrl-C reaches only this supervisor, which stops them with SIGTERM
            # (gunicorn's graceful stop finishes requests in flight; SIGINT would cut them off).
            env = {**os.environ, "WEB_CONCURRENCY": str(web_workers)} if name == "web" else os.environ.copy()
            children[name] = subprocess.Popen(cmd, env=env, start_new_session=True)
        click.echo(f"web: http://127.0.0.1:{port}  accounts: {', '.join(account_ids)}")
        click.echo(f"sample secrets: {devenv.dev_env_file()} (send a signed event: see README)")
        while not stopping:
            for name, proc in children.items():
                if proc.poll() is not None and not stopping:
                    click.echo(f"{name} exited with {proc.returncode}; stopping", err=True)
                    stopping, code = True, 1
            time.sleep(0.2)
    finally:
        for proc in children.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in children.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return code
