"""A real ``nst serve`` process for tests, on 127.0.0.1 and a port it picks itself (``--port 0``; the port is read
from its first line on stdout, so no other process can take it in between), and the requests tests make of it.

    server = start_server(tmp_path, "--workers", "2", env=env, token=None)   # waits for GET /v1/health
    r = submit(server["url"], content_bytes, [style_bytes], {"size": 64}, token=..., key=...)
    job = wait_final(server["url"], r.json()["id"], token=...)
    status = stop_server(server)                # SIGTERM, then its exit status (the process group is cleaned up)

The server runs in a session of its own (its embedded Dask workers in its process group), so that stop_server can
end every process it started, and only those.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(REPO / "cli.py")]
START_TIMEOUT = 120  # seconds for the server to listen and answer /v1/health (a loaded 2-core machine)


def auth(token: str | None) -> dict:
    """The Authorization header of ``token`` ({} for None)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _first_line(path: Path) -> str | None:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text.splitlines()[0] if "\n" in text else None


def start_server(tmp_path, *args, env=None, token=None, timeout=START_TIMEOUT) -> dict:
    """A running ``nst serve *args`` (with ``--port 0`` and ``--data tmp_path/serve-data`` unless given).
    Returns ``{"url": "http://127.0.0.1:PORT", "proc", "data", "stdout", "stderr", "token"}``; RuntimeError with the
    server's stderr when it exits or is not serving within ``timeout`` s. ``token``: sent to /v1/health while
    waiting (a server with --token-file needs one)."""
    tmp_path = Path(tmp_path)
    args = [str(a) for a in args]
    data = Path(args[args.index("--data") + 1]) if "--data" in args else tmp_path / "serve-data"
    extra = ([] if "--port" in args else ["--port", "0"]) + ([] if "--data" in args else ["--data", str(data)])
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    tag = f"{time.monotonic_ns()}"
    out, err = tmp_path / f"serve-{tag}.out", tmp_path / f"serve-{tag}.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(CLI + ["serve", *extra, *args], env=env, stdout=fo, stderr=fe,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = {"proc": proc, "data": data, "stdout": out, "stderr": err, "token": token, "url": None}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            line = _first_line(out)
            if line and server["url"] is None:
                server["url"] = line.split()[2].rstrip("/")
            if server["url"]:
                try:
                    if httpx.get(server["url"] + "/v1/health", headers=auth(token), timeout=5).status_code == 200:
                        return server
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"nst serve did not start (status {proc.poll()}): "
                           f"{err.read_text(errors='replace')[-2000:]}")
    except BaseException:
        _kill_group(proc)
        raise


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its session: the server and the workers it started
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=30)


def stop_server(server, sig=signal.SIGTERM, timeout=60) -> int:
    """Send ``sig`` to the server and return its exit status; if it has not exited within ``timeout`` s it is
    killed (and its status is then -9). Processes of its group still alive afterwards are killed."""
    proc = server["proc"]
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    status = proc.poll()
    _kill_group(proc)
    return proc.returncode if status is None else status


def submit(url, content: bytes | None, styles: list, spec: dict | None = None, token=None, key=None,
           timeout=60) -> httpx.Response:
    """POST /v1/jobs: ``content`` (None: none sent), each of ``styles`` as a file ``style``, ``spec`` as JSON."""
    files = ([("content", ("content.jpg", content, "application/octet-stream"))] if content is not None else [])
    files += [("style", (f"style-{k}.jpg", data, "application/octet-stream")) for k, data in enumerate(styles)]
    data = {"spec": json.dumps(spec)} if spec is not None else {}
    headers = dict(auth(token), **({"Idempotency-Key": key} if key else {}))
    return httpx.post(url + "/v1/jobs", files=files, data=data, headers=headers, timeout=timeout)


def get_job(url, job_id, token=None) -> dict:
    r = httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth(token), timeout=30)
    r.raise_for_status()
    return r.json()


def wait_final(url, job_id, token=None, timeout=120, until=None) -> dict:
    """The job once it is final (or once ``until(job)`` is true); AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(url, job_id, token)
        if (until(job) if until else job["status"] in ("succeeded", "failed", "cancelled")):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']} after {timeout} s: {job}"
        time.sleep(0.1)
