"""``nst serve``'s settings: the command's options, checked in one line each, as a frozen ``Settings``.

    p = subparsers.add_parser("serve"); add_arguments(p, number=int)      # cli.py (this module is light: stdlib only)
    settings = from_args(args)              # NSTError (one line) for a bad value or a public --host without tokens

Token file (``--token-file F``): one client per line, ``NAME TOKEN``; blank lines and lines starting with ``#`` are
skipped. Names and tokens are unique; a token has at least ``MIN_TOKEN_CHARS`` characters (``secrets.token_hex(16)``
gives 32), so that a guessable one is refused at start rather than found later. Without a token file there is one
client, ``LOCAL``, and the server binds only to loopback.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path

from ..errors import NSTError

__all__ = ["Settings", "LOCAL", "MIN_TOKEN_CHARS", "DEFAULT_PORT", "read_tokens", "parse_duration", "is_loopback",
           "add_arguments", "from_args"]

#: The one client of a server without tokens.
LOCAL = "local"
MIN_TOKEN_CHARS = 16
DEFAULT_PORT = 8018
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the HTTP layer needs to know (see SERVE.md: fields may be added, not renamed)."""

    data: Path                        # --data DIR: the SQLite store (DIR/nst-jobs.sqlite) unless --store
    body_limit: int = 25 * 2**20      # bytes of a request body (--max-body-mb 25)
    pixel_limit: int = 40_000_000     # pixels of one uploaded image, read from its header (--max-pixels 40e6)
    queue_limit: int = 8              # a client's queued + running jobs (--max-queued 8); over it: 429
    retention: float | None = None    # seconds a final job is kept (--retention 7d; None: until deleted)
    clients: dict | None = None       # token -> client name (--token-file); None: no tokens, one client "local"
    budget_limit: int | None = None   # objective evaluations of one job, all scales (--max-evaluations; None: any)


def read_tokens(path) -> dict:
    """{token: client name} of a token file (see the module docstring); NSTError naming the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NSTError(f"--token-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NSTError(f"--token-file {path}: cannot read it ({' '.join(str(exc).split())})") from None
    clients, names = {}, set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        where = f"--token-file {path}: line {number}"
        if len(parts) != 2:
            raise NSTError(f"{where}: expected NAME TOKEN (two words), got {len(parts)}")
        name, token = parts
        if len(token) < MIN_TOKEN_CHARS:
            raise NSTError(f"{where}: the token of {name!r} has {len(token)} characters; use at least "
                           f"{MIN_TOKEN_CHARS} (python -c 'import secrets; print(secrets.token_hex(16))')")
        if name in names:
            raise NSTError(f"{where}: client {name!r} is named twice")
        if token in clients:
            raise NSTError(f"{where}: {name!r} has the token of {clients[token]!r}")
        clients[token] = name
        names.add(name)
    if not clients:
        raise NSTError(f"--token-file {path}: no clients in it (one NAME TOKEN per line)")
    return clients


def parse_duration(text: str) -> float | None:
    """Seconds of "7d", "12h", "30m", "45s", "2w" or a plain number of seconds; "0", "off" or "never": None (keep
    until deleted). NSTError otherwise."""
    value = str(text).strip().lower()
    if value in ("0", "off", "never", "none"):
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", value)
    if not match or float(match.group(1)) <= 0:
        raise NSTError(f"--retention must be a duration such as 7d, 12h, 30m or 3600 (seconds), or 'off'; "
                       f"got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def add_arguments(p, number=float) -> None:
    """``nst serve``'s options on the argparse parser ``p``; ``number``: the CLI's integer type."""
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default: 127.0.0.1; any other than loopback needs --token-file)")
    p.add_argument("--port", type=number, default=DEFAULT_PORT, metavar="P",
                   help=f"TCP port (default: {DEFAULT_PORT}; 0 picks a free one, printed on the first line)")
    p.add_argument("--data", metavar="DIR", default="nst-serve-data",
                   help="directory of the job store (DIR/nst-jobs.sqlite) (default: ./nst-serve-data)")
    p.add_argument("--store", metavar="URL",
                   help="job store: a SQLite path or postgresql://... (default: DIR/nst-jobs.sqlite)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDR",
                       help="a Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: an embedded cluster)")
    where.add_argument("--workers", type=number, metavar="N", default=None,
                       help="worker processes of the embedded cluster (default: one per core)")
    p.add_argument("--token-file", metavar="F",
                   help="clients allowed, one 'NAME TOKEN' per line; every request then needs "
                        "'Authorization: Bearer TOKEN' (default: none, loopback only, one client)")
    p.add_argument("--max-body-mb", type=float, default=25.0, metavar="MB",
                   help="largest request body, MiB (default: 25)")
    p.add_argument("--max-pixels", type=float, default=40e6, metavar="N",
                   help="largest uploaded image, pixels, read from its header before decoding (default: 40e6)")
    p.add_argument("--max-queued", type=number, default=8, metavar="N",
                   help="queued + running jobs one client may have (default: 8)")
    p.add_argument("--max-evaluations", type=number, default=0, metavar="N",
                   help="objective evaluations one job may ask for, all scales together; more is refused at "
                        "submission (default: 0, no limit)")
    p.add_argument("--retention", default="off", metavar="TIME",
                   help="delete final jobs this long after they end: 7d, 12h, 30m, seconds (default: off, "
                        "kept until deleted)")
    p.add_argument("--drain-wait", type=float, default=0.0, metavar="S",
                   help="on SIGTERM / Ctrl-C, seconds running jobs get to finish before they stop at their next "
                        "checkpoint and go back to the queue for the next start (default: 0)")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr (default: off)")


def _positive(value, option: str, whole: bool = False):
    if value is None or not value > 0 or value != value or value == float("inf"):
        raise NSTError(f"{option} must be > 0, got {value!r}")
    return int(value) if whole else value


def from_args(args) -> Settings:
    """The Settings of parsed ``nst serve`` arguments; NSTError (one line) for a bad value, and for a ``--host``
    that is not loopback without ``--token-file``."""
    if not 0 <= args.drain_wait < float("inf"):
        raise NSTError(f"--drain-wait must be a number of seconds >= 0, got {args.drain_wait}")
    if args.workers is not None and args.workers < 1:
        raise NSTError(f"--workers must be >= 1, got {args.workers}")
    if not 0 <= args.port <= 65535:
        raise NSTError(f"--port must be 0..65535, got {args.port}")
    settings = Settings(data=Path(args.data),
                        body_limit=int(_positive(args.max_body_mb, "--max-body-mb") * 2**20),
                        pixel_limit=_positive(args.max_pixels, "--max-pixels", whole=True),
                        queue_limit=_positive(args.max_queued, "--max-queued", whole=True),
                        retention=parse_duration(args.retention),
                        clients=read_tokens(args.token_file) if args.token_file else None,
                        budget_limit=_positive(args.max_evaluations, "--max-evaluations", whole=True)
                        if args.max_evaluations != 0 else None)
    if settings.clients is None and not is_loopback(args.host):
        raise NSTError(f"--host {args.host} is not a loopback address: without --token-file nst serve listens only "
                       f"on 127.0.0.1 / ::1; give --token-file to serve a network")
    return settings
