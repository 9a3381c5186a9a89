"""Throughput of many jobs: `nst batch` (the embedded cluster in several worker layouts) against a shell loop of
`nst stylize` and against one Python process calling `stylize()` in a loop, side by side in one run.

    python bench/bench_batch.py [--jobs 24] [--size 192] [--layouts 1x2 2x1 2x2] [--rounds 1]
    python bench/bench_batch.py --allocators --jobs 6 --rounds 3   # the python loop, plain and huge-page malloc

A layout WxT: W worker processes of one thread, ONNX Runtime with T intra-op threads in each (NST_ORT_THREADS).

The jobs: Tübingen in the styles of Starry Night, The Scream and Composition VII in turn, at --size, the default
job otherwise (200 L-BFGS evaluations at one scale, content init). Every method runs as its own process tree from a
cold start (interpreter, imports, sessions); each round runs them all, the order rotated from round to round.
Reported per method: wall seconds, jobs per minute, peak memory of the whole process tree (the sum of its
processes' resident sets, sampled every 0.1 s), and for nst batch the overhead per job: slot-seconds not spent
inside a job (workers x wall - the jobs' own seconds from the store) per job, with and without the start-up (the
time to the first job's start). Writes bench/results/batch.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import IMAGES, load_avg, machine, save_json  # noqa: E402
from nst_core.process import memory  # noqa: E402

STYLES = ("starry_night", "the_scream", "composition_vii")
HUGE_LOOP = "python loop, huge-page malloc"


def jobs(n: int, size: int) -> list:
    return [{"content": str(IMAGES / "tubingen.jpg"), "style": str(IMAGES / f"{STYLES[k % 3]}.jpg"),
             "output": f"out{k:03d}.png", "size": size} for k in range(n)]


def tree_rss_mb(proc: psutil.Process) -> float:
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def measure(cmd: list, env: dict) -> dict:
    """Run ``cmd``; its wall seconds and the peak of its process tree's summed RSS (MB)."""
    start, began = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, handle, done = 0.0, psutil.Process(proc.pid), threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_mb(handle))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]}: exit {proc.returncode}: {err.decode()[-800:]}")
    return {"seconds": seconds, "peak_mb": peak, "began": began}


def python_loop(rows: list, out: Path) -> list:
    code = ("import json, sys\nfrom nst_core.api import stylize\nfrom nst_core.outputs.files import save_image\n"
            "for r in json.load(open(sys.argv[1])):\n"
            "    image, _ = stylize(r['content'], r['style'], size=r['size'])\n"
            "    save_image(sys.argv[2] + '/' + r['output'], image)\n")
    spec = out / "rows.json"
    spec.write_text(json.dumps(rows))
    return [sys.executable, "-c", code, str(spec), str(out)]


def shell_loop(rows: list, out: Path) -> list:
    nst = f"{shlex.quote(sys.executable)} {shlex.quote(str(REPO / 'cli.py'))}"
    lines = [f"{nst} stylize {shlex.quote(r['content'])} {shlex.quote(r['style'])} --size {r['size']} -q "
             f"-o {shlex.quote(str(out / r['output']))}" for r in rows]
    return ["bash", "-c", "set -e\n" + "\n".join(lines)]


def batch(rows: list, out: Path, workers: int) -> list:
    manifest = out / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [sys.executable, str(REPO / "cli.py"), "batch", str(manifest), "-o", str(out / "o"), "--workers",
            str(workers), "-q"]


def batch_overhead(out: Path, workers: int, wall: float, began: float, n: int) -> dict:
    """Slot-seconds outside jobs per job, from the store (the jobs' seconds and start times)."""
    con = sqlite3.connect(out / "o" / "nst-jobs.sqlite")
    seconds, first_start = con.execute("select sum(seconds), min(started) from nst_jobs").fetchone()
    con.close()
    job_seconds = float(seconds)
    startup = first_start - began  # interpreter, imports, manifest, cluster: until the first job starts
    return {"job_seconds_sum": job_seconds, "job_seconds_median": job_seconds / n,
            "overhead_per_job_s": (workers * wall - job_seconds) / n,
            "overhead_per_job_after_startup_s": (workers * (wall - startup) - job_seconds) / n,
            "startup_s": startup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=24)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--layouts", nargs="+", default=["1x2", "2x1", "2x2"],
                    help="nst batch layouts WxT: W worker processes, T ONNX Runtime threads each")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--layouts-only", action="store_true",
                    help="only the nst batch layouts, against each other (writes batch_layouts.json)")
    ap.add_argument("--allocators", action="store_true",
                    help="only the python loop, with glibc's malloc plain and with the huge-page tunable that nst's "
                         "re-exec gives nst batch's workers (writes batch_allocators.json)")
    args = ap.parse_args()
    rows = jobs(args.jobs, args.size)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("GLIBC_TUNABLES", None)
    loops = [] if args.layouts_only else ["python loop", "shell loop"]
    methods = loops + [f"nst batch {layout}" for layout in args.layouts]
    huge_env = memory.reexec_env(env)
    if args.allocators:
        if huge_env is None:
            raise SystemExit("no huge-page malloc here (memory.reexec_env is None): nothing to compare")
        methods = ["python loop", HUGE_LOOP]
    results = {m: [] for m in methods}
    print(f"machine: {machine()}; load average before: {load_avg()}", flush=True)
    for r in range(args.rounds):
        order = methods[r % len(methods):] + methods[:r % len(methods)]
        for method in order:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                if method in ("python loop", HUGE_LOOP):
                    cmd = python_loop(rows, out)
                elif method == "shell loop":
                    cmd = shell_loop(rows, out)
                else:
                    workers, threads = (int(v) for v in method.split()[-1].split("x"))
                    cmd = batch(rows, out, workers)
                m = measure(cmd, dict(env, NST_ORT_THREADS=str(threads)) if method.startswith("nst batch") else
                            huge_env if method == HUGE_LOOP else env)
                began = m.pop("began")
                if method.startswith("nst batch"):
                    m.update(batch_overhead(out, workers, m["seconds"], began, args.jobs))
                m["jobs_per_min"] = 60.0 * args.jobs / m["seconds"]
                results[method].append(m)
                print(f"round {r + 1} {method}: {m['seconds']:.1f} s, {m['jobs_per_min']:.2f} jobs/min, peak "
                      f"{m['peak_mb']:.0f} MB" + (f", overhead/job {m['overhead_per_job_s']:.3f} s "
                                                  f"({m['overhead_per_job_after_startup_s']:.3f} s after start-up "
                                                  f"{m['startup_s']:.1f} s)" if "startup_s" in m else ""),
                      flush=True)
    summary = {}
    for method, ms in results.items():
        summary[method] = {k: statistics.median(m[k] for m in ms) for k in ms[0]}
    shell = summary["shell loop"]["jobs_per_min"] if "shell loop" in summary else None
    if args.allocators:
        print(f"huge-page malloc / plain, wall seconds: "
              f"{summary[HUGE_LOOP]['seconds'] / summary['python loop']['seconds']:.3f}")
    print(f"\n{args.jobs} jobs at {args.size} px, medians over {args.rounds} round(s); load average after: "
          f"{load_avg()}")
    for method, s in summary.items():
        extra = ""
        if "overhead_per_job_s" in s:
            share = s["overhead_per_job_s"] / s["job_seconds_median"]
            extra = (f"; overhead/job {s['overhead_per_job_s']:.3f} s = {100 * share:.1f} % of a job "
                     f"({s['job_seconds_median']:.2f} s), {s['overhead_per_job_after_startup_s']:.3f} s after "
                     f"start-up")
        ratio = f" ({s['jobs_per_min'] / shell:.2f}x the shell loop)" if shell else ""
        print(f"{method:24s} {s['jobs_per_min']:6.2f} jobs/min{ratio}, peak {s['peak_mb']:.0f} MB{extra}")
    name = "batch_allocators" if args.allocators else "batch_layouts" if args.layouts_only else "batch"
    save_json(name, {"machine": machine(), "jobs": args.jobs, "size": args.size, "rounds": args.rounds,
                        "runs": results, "medians": summary, "load_after": load_avg()})


if __name__ == "__main__":
    main()
