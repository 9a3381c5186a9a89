"""``nst serve-web``: the browser host (hosts/web) and a bundle over HTTP, from the standard library's server.

The URL tree (every path read-only, GET / HEAD only):

    /                 hosts/web/ (index.html, app.mjs, worker.mjs, ...; not its node_modules)
    /ort/             hosts/web/node_modules/onnxruntime-web/dist/ (the WebAssembly build's .mjs and .wasm)
    /lib/             hosts/node/lib/ (the plain-JavaScript L-BFGS and pixel code the page shares with Node)
    /bundle/          the bundle directory (manifest.json, targets.onnx, objective.onnx, reference/)
    /presets.json     nst's presets (nst_core.presets), for the page's preset menu

Every answer carries Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp, so
the page is cross-origin isolated and onnxruntime-web's WebAssembly backend may use several threads
(SharedArrayBuffer), and Cache-Control: no-store, so a rebuilt bundle is never read stale. It binds 127.0.0.1
unless told otherwise: it serves files, and nothing else, to whoever can reach it.
"""
from __future__ import annotations

import errno
import functools
import http.server
import json
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..spec import presets
from .bundle import load_manifest
from ..errors import NSTError

__all__ = ["WEB_ROOT", "DEFAULT_PORT", "routes", "presets_json", "make_server"]

REPO = Path(__file__).resolve().parents[2]
WEB_ROOT = REPO / "hosts" / "web"
ORT_DIST = WEB_ROOT / "node_modules" / "onnxruntime-web" / "dist"
NODE_LIB = REPO / "hosts" / "node" / "lib"
DEFAULT_PORT = 8017
HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
           "Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-store"}
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
         ".json": "application/json", ".onnx": "application/octet-stream", ".map": "application/json"}


def presets_json() -> bytes:
    """nst's presets as JSON: {name: {image_size, style_size, content_layer, content_weight, style_layers,
    style_weights, tv_weight}}, weights unscaled (a host multiplies the style weights by the bundle's
    problem.style_scale), plus "default": the default preset's name."""
    table = {name: {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()}
             for name, p in presets.PRESETS.items()}
    return json.dumps({"default": presets.DEFAULT_PRESET, "presets": table}, indent=1).encode()


def routes(bundle_dir: Path) -> list[tuple[str, Path]]:
    """(URL prefix, directory) pairs, longest prefix first; '/' is hosts/web."""
    return [("/bundle/", bundle_dir), ("/ort/", ORT_DIST), ("/lib/", NODE_LIB), ("/", WEB_ROOT)]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files from `routes`, with the isolation headers; no directory listings; quiet unless `verbose`."""

    extensions_map = dict(http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES)

    def __init__(self, *args, table, verbose=False, **kwargs):
        self.table = table
        self.verbose = verbose
        super().__init__(*args, directory=str(WEB_ROOT), **kwargs)

    def translate_path(self, path: str) -> str:
        url = unquote(urlsplit(path).path)
        parts = [p for p in url.split("/") if p not in ("", ".", "..")]
        for prefix, root in self.table:
            head = [p for p in prefix.split("/") if p]
            if parts[:len(head)] == head:
                rest = parts[len(head):]
                if not head and rest[:1] == ["node_modules"]:
                    break
                return str(root.joinpath(*rest)) + ("/" if url.endswith("/") else "")
        return str(WEB_ROOT / ".not-served")

    def do_GET(self):
        if urlsplit(self.path).path == "/presets.json":
            return self._send(presets_json(), "application/json")
        return super().do_GET()

    def do_HEAD(self):
        if urlsplit(self.path).path == "/presets.json":
            return self._send(presets_json(), "application/json", body=False)
        return super().do_HEAD()

    def _send(self, data: bytes, ctype: str, body: bool = True):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def list_directory(self, path):
        self.send_error(404, "no directory listings")
        return None

    def end_headers(self):
        for k, v in HEADERS.items():
            self.send_header(k, v)
        super().end_headers()

    def log_message(self, format, *args):
        if self.verbose:
            super().log_message(format, *args)


def make_server(bundle_dir, port: int = DEFAULT_PORT, host: str = "127.0.0.1", verbose: bool = False):
    """A ThreadingHTTPServer for the page and `bundle_dir` (not yet serving: call serve_forever). NSTError for a
    directory that is not a bundle, a missing hosts/web install (npm ci) or a port that cannot be bound."""
    d, _ = load_manifest(bundle_dir)
    if not (WEB_ROOT / "index.html").is_file():
        raise NSTError(f"{WEB_ROOT}: the browser host is missing (hosts/web/index.html)")
    if not (ORT_DIST / "ort.wasm.min.mjs").is_file():
        raise NSTError(f"{ORT_DIST.parent}: onnxruntime-web is not installed; run: cd {WEB_ROOT} && npm ci")
    if not 0 <= port <= 65535:
        raise NSTError(f"port {port} is out of range (0-65535; 0 picks a free one)")
    handler = functools.partial(_Handler, table=routes(Path(d).resolve()), verbose=verbose)
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise NSTError(f"port {port} on {host} is in use; pick another with --port (0 picks a free one)") from None
        if e.errno == errno.EACCES:
            raise NSTError(f"port {port} on {host}: permission denied; use a port above 1023") from None
        raise NSTError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
