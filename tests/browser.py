"""Debian's chromium and Node.js for the tests that drive a page through playwright-core (hosts/web's packages):
test_web_host (the browser host) and test_serve_page (nst serve's page). No browser is ever downloaded.

Without chromium a local run skips, with the reason; under CI (CI set) it fails, since .ci/run installs chromium.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "hosts" / "web"
CHROMIUM = Path(os.environ.get("NST_CHROMIUM", "/usr/bin/chromium"))


def node_for_chromium(packages=("playwright-core",), what: str = "the browser test") -> str:
    """The path of node, once chromium and hosts/web's ``packages`` are there; skip or fail (see above)."""
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing under CI (.ci/run installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); {what} needs it")
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (playwright-core needs Node.js 20)")
    for pkg in packages:
        if not (WEB / "node_modules" / pkg).is_dir():
            pytest.fail(f"hosts/web/node_modules/{pkg} is missing: run `make test` (it runs npm ci there)")
    return node
