"""The web process's gunicorn opens no control socket: gunicorn (>= 25.1) opens one for
``gunicornc`` by default at a path every instance of a user on the host shares
(``$XDG_RUNTIME_DIR/gunicorn.ctl`` or ``~/.gunicorn/gunicorn.ctl``), where each instance that
starts takes it over from the one before, so a control command would reach the wrong instance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gunicorn.app.base import Application

GUNICORN = str(Path(sys.executable).parent / "gunicorn")
CONF = "python:connector.ops.gunicorn_conf"

APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


class _Loaded(Application):
    """gunicorn's own reading of a ``--config``, without a command line or an app."""

    def __init__(self) -> None:
        self.usage, self.prog, self.callable = None, None, None
        self.load_default_config()

    def init(self, parser, opts, args):  # type: ignore[no-untyped-def]
        return None

    def load(self):  # type: ignore[no-untyped-def]
        return None


def test_gunicorn_reads_the_control_socket_as_disabled() -> None:
    loaded = _Loaded()
    if "control_socket_disable" not in loaded.cfg.settings:
        pytest.skip("this gunicorn has no control socket")
    loaded.load_config_from_module_name_or_filename(CONF)
    assert loaded.cfg.control_socket_disable is True


def test_the_web_server_leaves_no_control_socket_in_home(tmp_path: Path) -> None:
    """A real gunicorn with the product's settings (and a trivial app: the settings are the subject),
    HOME in a temporary directory: after it served and stopped, nothing was created there."""
    (tmp_path / "tinyapp.py").write_text(APP)
    home = tmp_path / "home"
    home.mkdir()
    bound = tmp_path / "web.sock"
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env.update(
        HOME=str(home),
        PYTHONPATH=os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])]),
        CONNECTOR_BIND=f"unix:{bound}",
        WEB_CONCURRENCY="1",
    )
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([GUNICORN, "--config", CONF, "tinyapp:app"], env=env, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 30
            while not bound.exists():  # the master handles TERM only after it would open the socket
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    text = log.read_text()
    assert "Booting worker" in text or "Listening at" in text, text
    assert "Control socket" not in text, text
    assert not (home / ".gunicorn").exists(), sorted(p.name for p in home.iterdir())
