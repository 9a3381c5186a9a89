"""Real servers for tests, on 127.0.0.1 only: a PostgreSQL server on a temporary data directory and port, and a Dask
scheduler with worker processes. Each start function returns what to stop; the stop functions end only the
processes they started (by their ids) and remove the temporary directories.

PostgreSQL refuses to run as root: as root (CI) its commands run as the ``postgres`` user (``runuser``), on a data
directory that user owns. ``postgres_bin()`` is None when Debian's ``postgresql`` package is not installed.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).with_name("dask"))


def wait_for(what: str, predicate, timeout: float = 120, every: float = 0.1):
    """``predicate()``'s first true value, asked every ``every`` s; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> str | None:
    """The directory of initdb / pg_ctl (the newest installed), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _as_server_user(cmd: list) -> list:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start_postgres() -> dict:
    """A fresh PostgreSQL server (trust authentication, user ``nst``) on 127.0.0.1 and a free port. Returns
    ``{"url": "postgresql://nst@127.0.0.1:PORT/postgres", ...}``; RuntimeError (with the reason) if it cannot."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        raise RuntimeError("running as root without runuser: PostgreSQL refuses to run as root")
    root = tempfile.mkdtemp(prefix="nst-pg-", dir="/tmp")
    data, log, port = os.path.join(root, "data"), os.path.join(root, "log"), free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    run = lambda cmd: subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=120)  # noqa
    r = run([f"{bindir}/initdb", "-D", data, "-U", "nst", "--auth=trust", "-E", "UTF8", "--no-sync"])
    if r.returncode:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {r.stderr.strip()[-300:]}")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    r = run([f"{bindir}/pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start"])
    if r.returncode:
        text = Path(log).read_text()[-300:] if os.path.exists(log) else r.stderr
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {text.strip()}")
    return {"url": f"postgresql://nst@127.0.0.1:{port}/postgres", "root": root, "data": data, "bindir": bindir,
            "port": port}


def stop_postgres(server: dict) -> None:
    subprocess.run(_as_server_user([f"{server['bindir']}/pg_ctl", "-D", server["data"], "-m", "immediate", "-w",
                                    "stop"]), capture_output=True, timeout=60)
    shutil.rmtree(server["root"], ignore_errors=True)


def new_database(server: dict, name: str) -> str:
    """A new empty database on the server; its URL."""
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={server['port']} user=nst dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://nst@127.0.0.1:{server['port']}/{name}"


def start_dask(env: dict, workers: int = 2, memory: str = "2GiB", resources: str | None = "MEMORY=2048") -> dict:
    """``dask scheduler`` and ``workers`` ``dask worker`` processes (a nanny each, one thread) on 127.0.0.1, in
    their own process group. Returns ``{"address", "procs", "dir"}``; waits until every worker has joined."""
    from distributed import Client

    root = tempfile.mkdtemp(prefix="nst-dask-")
    sched_file = os.path.join(root, "scheduler.json")
    env = dict(env, PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p]))
    common = dict(env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=open(os.path.join(root, "log"), "w"),
                  start_new_session=True)
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", sched_file], **common)]
    deadline = time.monotonic() + 60
    while not os.path.exists(sched_file) and time.monotonic() < deadline:
        time.sleep(0.1)
    extra = ["--resources", resources] if resources else []
    for k in range(workers):
        procs.append(subprocess.Popen([DASK, "worker", "--scheduler-file", sched_file, "--nthreads", "1",
                                       "--nworkers", "1", "--memory-limit", memory, "--no-dashboard",
                                       "--host", "127.0.0.1", "--name", f"w{k}", *extra], **common))
    with Client(scheduler_file=sched_file, timeout="30s") as client:
        client.wait_for_workers(workers, timeout=60)
        address = client.scheduler.address
    return {"address": address, "procs": procs, "dir": root, "file": sched_file}


def stop_dask(cluster: dict) -> None:
    for p in reversed(cluster["procs"]):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in cluster["procs"]:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    shutil.rmtree(cluster["dir"], ignore_errors=True)


def worker_pids(address: str) -> dict:
    """{worker address: pid} of the cluster's worker processes (each answers for itself)."""
    from distributed import Client

    with Client(address, timeout="30s") as client:
        return client.run(os.getpid)
