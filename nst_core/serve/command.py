"""``nst serve``: the options (``settings``), a listening socket, the job store, the engine, the app, uvicorn.

    nst serve [--host 127.0.0.1] [--port 8018] [--data DIR] [--scheduler ADDR] [--store URL] [--token-file F]

The socket is bound first, so that a port in use or a bad address is one line and exit status 2 before a cluster
starts; the first line on stdout is ``nst serve: http://HOST:PORT/ ...`` once the engine is up (with ``--port 0`` it
tells the port picked). Without ``--token-file`` only a loopback ``--host`` is accepted.

Stopping (first version): SIGTERM or SIGINT turns ``app.state.accepting`` off and stops uvicorn (open event streams
end, their clients reconnect); the engine is closed and the status is 0. Jobs still queued or running stay so in the
store, and a later ``nst serve`` on the same store runs them (``Engine.resume``).
"""
from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
import threading

import uvicorn

from ..errors import NSTError
from ..inputs.images import one_line
from ..jobs.engine import Engine
from ..jobs.store import open_store
from .app import create_app
from .settings import from_args

__all__ = ["run", "listen"]

_STOP = (signal.SIGINT, signal.SIGTERM)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port`` (IPv4 or IPv6); NSTError (one line) when it cannot be."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=128)
    except (OSError, UnicodeError) as exc:
        raise NSTError(f"cannot listen on {host}:{port} ({one_line(getattr(exc, 'strerror', None) or exc)})") from None
    sock.set_inheritable(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server with nst's stop: the first SIGTERM / SIGINT stops taking jobs and stops the server (a
    second one forces it); the signal is not raised again afterwards (uvicorn would, and nst would exit 143)."""

    def __init__(self, config, app):
        super().__init__(config)
        self.nst_app = app

    def _on_stop(self, signum, frame):
        self.nst_app.state.accepting = False
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        before = {s: signal.signal(s, self._on_stop) for s in _STOP}
        try:
            yield
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(args) -> int:
    """``nst serve`` with parsed ``args`` (see ``settings.add_arguments``); returns the exit status."""
    settings = from_args(args)  # a non-loopback --host without --token-file is refused there
    sock = listen(args.host, args.port)
    try:
        where = args.store
        if where is None:
            try:
                settings.data.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise NSTError(f"--data {settings.data}: cannot create it ({one_line(exc.strerror or exc)})") from None
            where = str(settings.data / "nst-jobs.sqlite")
        engine = Engine(open_store(where), scheduler=args.scheduler, workers=args.workers)
        try:
            app = create_app(engine, settings)
            config = uvicorn.Config(app, log_level="info" if args.verbose else "warning", access_log=args.verbose,
                                    lifespan="off", timeout_graceful_shutdown=10, server_header=False)
            server = _Server(config, app)
            shown = where if "://" not in where else where.split("://")[0] + " store"  # no password on stdout
            print(f"nst serve: {_url(sock)} (jobs in {shown}; Ctrl-C to stop)", flush=True)
            server.run(sockets=[sock])
        finally:
            engine.close()
    finally:
        sock.close()
    logging.getLogger("nst.serve").info("nst serve: stopped")
    sys.stdout.flush()
    return 0
