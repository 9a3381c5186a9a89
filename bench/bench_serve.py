"""Load on `nst serve` against `nst batch` on the same jobs, side by side in one run (loopback only, bounded).

    python bench/bench_serve.py [--clients 10] [--jobs 40] [--size 128] [--rounds 1] [--poll 0.25]

The jobs: Tübingen in the styles of Starry Night, The Scream and Composition VII in turn, at --size, the default job
otherwise (200 L-BFGS evaluations at one scale). Both run on the embedded cluster with its default workers.
- nst serve: a real server process on 127.0.0.1 and a free port (started and warm before the clock starts), with a
  token file of --clients clients (each within the default --max-queued 8); --clients threads submit the jobs
  (POST /v1/jobs, multipart, each with an Idempotency-Key and retried on a connection error), then poll
  GET /v1/jobs/{id} every --poll s until their jobs are final. Every GET's latency is recorded; those sent
  while jobs were running (between the first job's start and the last one's end) are the "busy" ones. A prober
  process of its own (so that the ten client threads' GIL does not inflate what it sees) also GETs a job every 50 ms.
- nst batch: the same jobs as a manifest, one process from a cold start, its embedded workers as nice as the
  server's (NST_WORKER_NICE, which they inherit), so that the other sessions on a shared machine weigh on both alike.
Throughput of both is 60 x jobs / span, the span being from the first job's creation to the last one's finish as
each store records them (so the serve number carries no server start-up and the batch one no cluster start-up); the
batch's whole wall time is reported too. Checked: every job succeeded, the server's store holds exactly --jobs jobs
(none lost, none duplicated) and every result is a PNG of the right size. Peak memory: the server process alone
and its process tree (with the worker processes), and nst batch's tree, sampled every 0.1 s.
Writes bench/results/serve.json.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.bench_batch import jobs as batch_rows, measure, tree_rss_mb  # noqa: E402
from bench.common import load_avg, machine, save_json  # noqa: E402
from nst_core.serve.lifecycle import WORKER_NICE  # noqa: E402

NST = [sys.executable, str(REPO / "cli.py")]
FINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def span(store: Path) -> tuple[float, float, list, float]:
    """(first created, last finished, [statuses], median seconds of a job on its worker) of a store's jobs."""
    con = sqlite3.connect(store)
    first, last = con.execute("select min(created), max(finished) from nst_jobs").fetchone()
    statuses = [s for (s,) in con.execute("select status from nst_jobs")]
    seconds = statistics.median(s for (s,) in con.execute("select seconds from nst_jobs"))
    con.close()
    return first, last, statuses, seconds


def run_batch(rows: list, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "m.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
        m = measure(NST + ["batch", str(manifest), "-o", str(Path(tmp) / "o"), "-q"], env)
        first, last, statuses, job_s = span(Path(tmp) / "o" / "nst-jobs.sqlite")
    assert statuses.count("succeeded") == len(rows), f"nst batch: {statuses}"
    return {"span_s": last - first, "jobs_per_min": 60 * len(rows) / (last - first), "job_s": job_s,
            "wall_s": m["seconds"], "peak_tree_mb": m["peak_mb"]}


class Sampler(threading.Thread):
    """The peak RSS (MB) of a process alone and of its tree, every 0.1 s until ``stop``."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc, self.done = psutil.Process(pid), threading.Event()
        self.alone = self.tree = 0.0

    def run(self):
        while not self.done.is_set():
            try:
                self.alone = max(self.alone, self.proc.memory_info().rss / 2**20)
            except psutil.Error:
                return
            self.tree = max(self.tree, tree_rss_mb(self.proc))
            time.sleep(0.1)


def start_server(data: Path, tokens: Path, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(NST + ["serve", "--data", str(data), "--port", str(port), "--token-file", str(tokens)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {tokens.read_text().split()[1]}"}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"nst serve exited {proc.returncode}: {proc.stderr.read().decode()[-800:]}")
        try:
            if httpx.get(f"{url}/v1/health", headers=auth, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("nst serve did not answer /v1/health within 120 s")


def client(url: str, token: str, rows: list, poll: float, latencies: list, tag: str) -> list:
    """Submit ``rows`` as the client of ``token``, then poll them until final; returns [(id, final status)];
    appends (sent at, seconds) of every GET /v1/jobs/{id} to ``latencies``."""
    ids = []
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        for k, row in enumerate(rows):
            files = [("content", ("content.jpg", Path(row["content"]).read_bytes(), "image/jpeg")),
                     ("style", ("style.jpg", Path(row["style"]).read_bytes(), "image/jpeg"))]
            for attempt in range(5):
                try:
                    r = http.post("/v1/jobs", files=files, data={"spec": json.dumps({"size": row["size"]})},
                                  headers={"Idempotency-Key": f"{tag}-{k}"})
                    break
                except httpx.TransportError:
                    time.sleep(0.5 * (attempt + 1))
            assert r.status_code == 202, (r.status_code, r.text)
            ids.append(r.json()["id"])
        status = {}
        while len(status) < len(ids):
            for job_id in ids:
                if job_id in status:
                    continue
                sent = time.time()
                t = time.perf_counter()
                r = http.get(f"/v1/jobs/{job_id}")
                latencies.append((sent, time.perf_counter() - t))
                if r.json()["status"] in FINAL:
                    status[job_id] = r.json()["status"]
            time.sleep(poll)
    return list(status.items())


def probe(url: str, token: str, out: str, stop: str, every: float = 0.05) -> None:
    """A process of its own (no thread of the clients' process competes for its GIL): GET /v1/jobs/{id} of the
    client's newest job every ``every`` s until the file ``stop`` exists; writes [[sent at, seconds], ...] to
    ``out``. The id is looked up again (untimed) every second."""
    seen, job_id, looked = [], None, 0.0
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        while not os.path.exists(stop):
            if time.monotonic() - looked > 1.0:
                jobs = http.get("/v1/jobs", params={"limit": 1}).json()["jobs"]
                job_id, looked = (jobs[0]["id"] if jobs else None), time.monotonic()
            if job_id is not None:
                sent, t = time.time(), time.perf_counter()
                assert http.get(f"/v1/jobs/{job_id}").status_code == 200
                seen.append([sent, time.perf_counter() - t])
            time.sleep(every)
    Path(out).write_text(json.dumps(seen))


def check_results(url: str, tokens: list, ids: list, size: int) -> None:
    for token, job_id in zip(tokens, ids):
        with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
            r = http.get(f"/v1/jobs/{job_id}/result")
            assert r.status_code == 200, (r.status_code, r.text)
            with Image.open(io.BytesIO(r.content)) as im:
                assert im.format == "PNG" and min(im.size) == size, (im.format, im.size)


def run_serve(rows: list, clients: int, poll: float, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        tokens = [secrets.token_hex(16) for _ in range(clients)]
        (Path(tmp) / "tokens").write_text("".join(f"client{k} {t}\n" for k, t in enumerate(tokens)))
        proc, url = start_server(data, Path(tmp) / "tokens", env)
        sampler = Sampler(proc.pid)
        sampler.start()
        latencies, tag = [], f"bench-{os.getpid()}-{time.time_ns()}"
        stop, probed = Path(tmp) / "stop", Path(tmp) / "probe.json"
        prober = subprocess.Popen([sys.executable, __file__, "--probe", url, tokens[0], str(probed), str(stop)],
                                  env=env)
        try:
            share = [rows[k::clients] for k in range(clients)]
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                done = [f.result() for f in [pool.submit(client, url, tokens[k], part, poll, latencies, f"{tag}-{k}")
                                             for k, part in enumerate(share)]]
            outcomes = [s for part in done for _, s in part]
            ids = [j for part in done for j, _ in part]
            check_results(url, [tokens[k] for k, part in enumerate(done) for _ in part], ids, rows[0]["size"])
        finally:
            stop.touch()
            prober.wait(timeout=60)
            sampler.done.set()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
        con = sqlite3.connect(data / "nst-jobs.sqlite")
        started, ended = con.execute("select min(started), max(finished) from nst_jobs").fetchone()
        con.close()
        first, last, statuses, job_s = span(data / "nst-jobs.sqlite")
        probe_seen = json.loads(probed.read_text())
    assert code == 0, f"nst serve exited {code} after SIGTERM"
    assert outcomes.count("succeeded") == len(rows), outcomes
    assert len(statuses) == len(rows) == len(set(ids)), (len(statuses), len(set(ids)))  # none lost or duplicated
    busy = sorted(s for sent, s in latencies if started <= sent <= ended)
    alone = sorted(s for sent, s in probe_seen if started <= sent <= ended)
    q, qa = statistics.quantiles(busy, n=100), statistics.quantiles(alone, n=100)
    return {"span_s": last - first, "jobs_per_min": 60 * len(rows) / (last - first), "job_s": job_s,
            "gets_busy": len(busy), "get_p50_ms": 1000 * statistics.median(busy), "get_p95_ms": 1000 * q[94],
            "get_max_ms": 1000 * busy[-1], "probe_gets": len(alone), "probe_p50_ms": 1000 * statistics.median(alone),
            "probe_p95_ms": 1000 * qa[94], "server_peak_mb": sampler.alone, "server_tree_peak_mb": sampler.tree}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--poll", type=float, default=0.25, help="seconds between a client's rounds of GETs")
    ap.add_argument("--nice-ab", action="store_true",
                    help="also nst serve with its embedded workers not reniced (NST_WORKER_NICE=0)")
    ap.add_argument("--probe", nargs=4, metavar=("URL", "TOKEN", "OUT", "STOP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return probe(*args.probe)
    rows = batch_rows(args.jobs, args.size)
    for r in rows:
        r.pop("output")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    print(f"machine: {machine()}; load average before: {load_avg()}", flush=True)
    results = {"nst serve": [], "nst batch": []}
    if args.nice_ab:
        results["nst serve, workers not reniced"] = []
    for r in range(args.rounds):
        for method in (list(results) if r % 2 == 0 else list(reversed(results))):
            if method.startswith("nst serve"):
                m = run_serve(rows, args.clients, args.poll, dict(env, NST_WORKER_NICE="0") if "not" in method
                              else env)
            else:  # its workers as nice as the server's, so that other load on the machine weighs on both alike
                m = run_batch([dict(row, output=f"out{k:03d}.png") for k, row in enumerate(rows)],
                              dict(env, NST_WORKER_NICE=str(WORKER_NICE)))
            results[method].append(m)
            print(f"round {r + 1} {method}: " + ", ".join(f"{k} {v:.3g}" for k, v in m.items()), flush=True)
    medians = {method: {k: statistics.median(m[k] for m in ms) for k in ms[0]} for method, ms in results.items()}
    s, b = medians["nst serve"], medians["nst batch"]
    print(f"\n{args.jobs} jobs at {args.size} px from {args.clients} clients, medians of {args.rounds} round(s); "
          f"load average after: {load_avg()}")
    print(f"nst serve {s['jobs_per_min']:.2f} jobs/min = {s['jobs_per_min'] / b['jobs_per_min']:.2f}x nst batch "
          f"({b['jobs_per_min']:.2f} jobs/min; its wall {b['wall_s']:.1f} s with start-up)")
    print(f"GET /v1/jobs/{{id}} while busy, from a prober process of its own ({s['probe_gets']:.0f} requests, one "
          f"every 50 ms): p50 {s['probe_p50_ms']:.1f} ms, p95 {s['probe_p95_ms']:.1f} ms (target <= 50)")
    print(f"  as the {args.clients} client threads saw them ({s['gets_busy']:.0f} requests, one Python process): p50 "
          f"{s['get_p50_ms']:.1f} ms, p95 {s['get_p95_ms']:.1f} ms, max {s['get_max_ms']:.1f} ms")
    print(f"peak memory: server {s['server_peak_mb']:.0f} MB, server + workers {s['server_tree_peak_mb']:.0f} MB; "
          f"nst batch + workers {b['peak_tree_mb']:.0f} MB")
    print(f"a job on its worker (median): serve {s['job_s']:.2f} s, batch {b['job_s']:.2f} s")
    if args.nice_ab:
        n = medians["nst serve, workers not reniced"]
        print(f"workers not reniced: {n['jobs_per_min']:.2f} jobs/min, prober's GET p50 {n['probe_p50_ms']:.1f} ms, "
              f"p95 {n['probe_p95_ms']:.1f} ms (clients' p95 {n['get_p95_ms']:.1f} ms), a job {n['job_s']:.2f} s")
    save_json("serve", {"machine": machine(), "jobs": args.jobs, "size": args.size, "clients": args.clients,
                        "rounds": args.rounds, "runs": results, "medians": medians, "load_after": load_avg()})


if __name__ == "__main__":
    main()
