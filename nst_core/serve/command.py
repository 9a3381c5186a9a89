"""``nst serve``: the options (``settings``), a listening socket, the job store, the engine, the app, uvicorn.

    nst serve [--host 127.0.0.1] [--port 8018] [--data DIR] [--scheduler ADDR] [--store URL] [--token-file F]

The socket is bound first, so that a port in use or a bad address is one line and exit status 2 before a cluster
starts; the first line on stdout is ``nst serve: http://HOST:PORT/ ...`` once the engine is up (with ``--port 0`` it
tells the port picked). Without ``--token-file`` only a loopback ``--host`` is accepted.

Starting, stopping and retention are ``lifecycle``'s: one server per store, the store's unfinished jobs resumed at
start, a stop signal drains (no new jobs; running ones back to the queue at their next checkpoint; exit 0).
"""
from __future__ import annotations

import logging
import socket
import sys

from ..errors import NSTError
from ..inputs.images import one_line
from ..jobs.engine import Engine
from ..jobs.store import open_store
from . import lifecycle
from .app import create_app
from .settings import from_args

__all__ = ["run", "listen"]


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port`` (IPv4 or IPv6); NSTError (one line) when it cannot be.

    Made with its protocol named (IPPROTO_TCP, not 0 as ``socket.create_server`` leaves it): asyncio turns Nagle's
    algorithm off (TCP_NODELAY) only on accepted sockets whose protocol says TCP, and with it on, every request after
    the first on a kept-alive connection waited for the client's delayed ACK: 44 ms for a 404, against 0.5 ms."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             proto=socket.IPPROTO_TCP)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
    except (OSError, UnicodeError) as exc:
        raise NSTError(f"cannot listen on {host}:{port} ({one_line(getattr(exc, 'strerror', None) or exc)})") from None
    sock.set_inheritable(False)
    return sock


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
        store = open_store(where)
        held = lifecycle.claim(store)  # before the cluster starts: a second server on this store is one line
        try:
            engine = Engine(store, scheduler=args.scheduler, workers=args.workers,
                            worker_nice=lifecycle.worker_nice())
            try:
                app = create_app(engine, settings)
            except BaseException:
                engine.close()
                raise
            shown = where if "://" not in where else where.split("://")[0] + " store"  # no password on stdout
            print(f"nst serve: {_url(sock)} (jobs in {shown}; Ctrl-C to stop)", flush=True)
            status = lifecycle.serve(app, engine, settings, sock, drain_wait=args.drain_wait,
                                     log_level="info" if args.verbose else "warning", access_log=args.verbose)
        finally:
            held.release()
            store.close()
    finally:
        sock.close()
    logging.getLogger("nst.serve").info("nst serve: stopped")
    sys.stdout.flush()
    return status
