"""Peak memory of the default schedule and of one evaluation, this checkout against another revision, side by side.

    python bench/bench_memory.py [--sizes 2048 a4] [--before main] [--repeats 3] [--breakdown] [--fit]
                                 [--eval-sizes 1024 2048] [--pattern-sizes 1024 2048] [--skip-schedule]

"before" is the revision given by ``--before`` (default ``main``), exported with ``git archive`` into a temporary
directory and imported from there; "after" is this checkout. Both use this checkout's model file and inputs, the
same Python and the same huge-page malloc (each child re-executes itself with glibc's tunable as ``nst`` does).
Sections, in this order:
  eval      one evaluation of bench_objective's starry_night objective (the one-session objective) at each
            ``--eval-sizes``: the time per evaluation with the before and after objectives alternating in ONE
            process (so both see the same load; ``2 * repeats`` timed evaluations each, medians), and the peak of
            fresh processes doing 3 evaluations (medians over ``--repeats``), with the losses of both
  pattern   the same peak and time, this checkout, ORT's memory pattern on and off (``nst_core.network.model.MEM_PATTERN``)
  schedule  for each ``--sizes`` (the smaller edge in px, or ``a4`` = 3508x2480 as in bench_printsize.py), fresh
            processes alternating versions: ``stylize(tubingen, starry_night, size=SIZE)`` with every default
            (preset starry_night, the default coarse-to-fine schedule, our L-BFGS); medians over ``--repeats`` of
            the peak resident memory (VmHWM) and of the wall time (process start to the image), ratios after/before
  breakdown (``--breakdown``, after only, one more run per size) VmRSS sampled every 10 ms in a thread; for every
            ONNX Runtime call of the last scale: the resident memory when it starts (what Python holds: the
            optimizer's vectors, the objective's inputs, earlier scales' results, the libraries) and the largest
            seen during it (the rest: ORT's buffers of that evaluation), in bytes per output pixel, and NumPy's own
            bytes alive then (tracemalloc); medians over the last scale's calls
  fit       (``--fit``) single-scale runs and the schedule rows above, and ``memory.estimate_peak_mb`` refitted
Prints each row and writes bench/results/memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the code a child imports nst_core from (a "before" snapshot, or this checkout)
CODE = Path(os.environ.get("NST_BENCH_CODE", REPO))
sys.path.insert(0, str(CODE))

CACHE = REPO / "bench" / "results"


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no {key} in /proc/self/status")


class _Sampler:
    """VmRSS every ``period`` s in a daemon thread; ``peak`` the largest since the last ``reset``."""

    def __init__(self, period: float = 0.01):
        self.period, self.peak, self._stop = period, 0.0, False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self._stop:
            self.peak = max(self.peak, _status_mb("VmRSS"))
            time.sleep(self.period)

    def reset(self) -> float:
        now = _status_mb("VmRSS")
        self.peak = now
        return now


def _instrument(calls: list):
    """Wrap onnxruntime's InferenceSession.run to record (RSS at entry, NumPy bytes at entry, peak RSS during)."""
    import tracemalloc
    import onnxruntime
    tracemalloc.start()
    sampler = _Sampler()
    cls = onnxruntime.InferenceSession
    original = cls.run

    def run(self, *args, **kwargs):
        entry, numpy_now = sampler.reset(), tracemalloc.get_traced_memory()[0] / 2**20
        try:
            return original(self, *args, **kwargs)
        finally:
            calls.append((entry, numpy_now, max(sampler.peak, _status_mb("VmRSS"))))

    cls.run = run


def _child(content: str, size: str, out: str, breakdown: bool) -> None:
    t0 = float(os.environ["NST_BENCH_T0"])
    from nst_core.outputs.files import save_image
    from nst_core.api import stylize
    calls: list = []
    marks: list = []
    if breakdown:
        _instrument(calls)

    def callback(record, x):
        if record.evaluation == 1 or getattr(record, "scale", 1) != marks[-1][0]:
            marks.append((getattr(record, "scale", 1), len(calls)))

    marks.append((0, 0))
    size = int(size)
    image, result = stylize(content, os.environ["NST_BENCH_STYLE"], size=size, model=os.environ["NST_BENCH_MODEL"],
                            device="cpu",
                            callback=callback if breakdown else None)
    save_image(Path(out), image)
    info = dict(seconds=time.time() - t0, peak_rss_mb=_status_mb("VmHWM"), shape=list(image.shape[:2]),
                evaluations=result.n_evals, loss=result.loss, sides=list(getattr(result, "sides", [size])))
    if breakdown:
        last = calls[marks[-1][1] - 1:]  # the last scale's calls (its first evaluation's call included)
        pixels = image.shape[0] * image.shape[1]
        per_px = lambda mb: mb * 2**20 / pixels  # noqa: E731
        info["breakdown"] = dict(
            calls=len(last), pixels=pixels,
            rss_at_entry_b_per_px=per_px(statistics.median(c[0] for c in last)),
            numpy_at_entry_b_per_px=per_px(statistics.median(c[1] for c in last)),
            ort_call_b_per_px=per_px(statistics.median(c[2] - c[0] for c in last)),
            peak_in_call_mb=max(c[2] for c in last), rss_at_entry_mb=statistics.median(c[0] for c in last))
    print(json.dumps(info))


def _objective(pkg, size: int):
    """(objective, x0) of bench_objective's starry_night problem at ``size`` px built with the package ``pkg``
    (nst_core, or the 'before' snapshot imported under another name): the one-session objective, one BLAS thread."""
    import importlib
    import onnx
    from threadpoolctl import ThreadpoolController
    from bench.bench_objective import STARRY, inputs
    from bench.common import features_model
    model, objective = importlib.import_module(pkg + ".network.model"), importlib.import_module(pkg + ".objective")
    layers = sorted({STARRY["content_layer"], *STARRY["style_layers"]})
    net = model.Network(onnx.load(features_model(CACHE)), [model.tap_name(k) for k in layers], device="cpu")
    cx, sx = inputs(size)
    ct, grams = objective.targets(net, cx, sx, STARRY["content_layer"], STARRY["style_layers"])
    inner = objective.make_objective(net, content_target=ct, style_targets=grams, **STARRY)
    blas = ThreadpoolController()

    def run(x):
        with blas.limit(limits=1, user_api="blas"):
            return inner(x)
    run.fresh_grad = getattr(inner, "fresh_grad", False)
    return run, cx.astype("float64")


def _eval_child(which: str, size: str, evaluations: str) -> None:
    """Peak of a fresh process doing ``evaluations`` evaluations with the 'before' or 'after' objective, each
    through the optimizers' evaluator (``optim.core._Evaluator``: its copy of the gradient, where it makes one)."""
    import importlib
    obj, x0 = _objective("nst_core", int(size))
    evaluate = importlib.import_module("nst_core.optim.core")._Evaluator(obj, x0, int(evaluations), None)
    for _ in range(int(evaluations)):
        loss = evaluate(x0)[0]
    print(json.dumps(dict(peak_rss_mb=_status_mb("VmHWM"), loss=loss)))


def section_eval(sizes, before: Path, repeats: int, evaluations: int = 3) -> list:
    """One objective evaluation, before and after: time (one process, the two objectives alternating,
    ``2 * repeats + 1`` evaluations each, the first dropped; medians) and peak (fresh processes doing
    ``evaluations`` evaluations; medians over ``repeats``)."""
    import shutil
    rows = []
    alias = Path(tempfile.mkdtemp())  # the before snapshot's nst_core as the package nst_core_before
    shutil.copytree(before / "nst_core", alias / "nst_core_before")
    sys.path.insert(0, str(alias))
    try:
        for size in sizes:
            objs = {"before": _objective("nst_core_before", size), "after": _objective("nst_core", size)}
            times = {v: [] for v in objs}
            losses = {}
            for i in range(2 * repeats + 1):
                for v, (obj, x0) in objs.items():
                    t = time.perf_counter()
                    losses[v] = obj(x0)[0]
                    if i:
                        times[v].append(time.perf_counter() - t)
            del objs
            peaks = {v: [] for v in times}
            for _ in range(repeats):
                for v, code in (("before", before), ("after", REPO)):
                    proc = subprocess.run([sys.executable, __file__, "--eval-child", v, str(size), str(evaluations)],
                                          env=dict(os.environ, NST_BENCH_CODE=str(code)), capture_output=True,
                                          text=True)
                    if proc.returncode != 0:
                        raise RuntimeError(proc.stderr[-3000:])
                    peaks[v].append(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"])
            row = dict(size=size, loss_before=losses["before"], loss_after=losses["after"],
                       **{f"{v}_s": statistics.median(times[v]) for v in times},
                       **{f"{v}_peak_mb": statistics.median(peaks[v]) for v in peaks}, times=times, peaks=peaks)
            row["time_ratio"] = row["after_s"] / row["before_s"]
            row["memory_ratio"] = row["after_peak_mb"] / row["before_peak_mb"]
            print(f"  eval {size} px: before {row['before_s']:.2f} s/eval, peak {row['before_peak_mb']:.0f} MB | "
                  f"after {row['after_s']:.2f} s/eval, peak {row['after_peak_mb']:.0f} MB | after/before time "
                  f"{row['time_ratio']:.2f}, memory {row['memory_ratio']:.2f} (losses {losses['before']:.10g} / "
                  f"{losses['after']:.10g})", flush=True)
            rows.append(row)
    finally:
        sys.path.remove(str(alias))
        shutil.rmtree(alias, ignore_errors=True)
    return rows


def _pattern_child(flag: str, size: str, evaluations: str) -> None:
    """``evaluations`` evaluations of bench_objective's starry_night objective at ``size`` px with ORT's memory
    pattern on or off; JSON: peak VmHWM and the median seconds per evaluation after the first."""
    from nst_core.network import model
    model.MEM_PATTERN = flag == "on"
    obj, x0 = _objective("nst_core", int(size))
    times = []
    for _ in range(int(evaluations)):
        t = time.perf_counter()
        obj(x0)
        times.append(time.perf_counter() - t)
    print(json.dumps(dict(peak_rss_mb=_status_mb("VmHWM"), seconds=statistics.median(times[1:]), all=times)))


def section_pattern(sizes, repeats: int, evaluations: int = 4) -> list:
    """ORT's memory pattern on / off (``nst_core.network.model.MEM_PATTERN``): peak and time per evaluation of the
    one-session objective in fresh processes, alternating; medians over ``repeats``."""
    rows = []
    for size in sizes:
        runs = {"on": [], "off": []}
        for _ in range(repeats):
            for flag in runs:
                proc = subprocess.run([sys.executable, __file__, "--pattern-child", flag, str(size), str(evaluations)],
                                      env=dict(os.environ, NST_BENCH_CODE=str(REPO)), capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr[-3000:])
                runs[flag].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        row = dict(size=size, **{f"{flag}_{k}": statistics.median(r[k] for r in rs) for flag, rs in runs.items()
                                 for k in ("peak_rss_mb", "seconds")}, runs=runs)
        row["memory_ratio"] = row["off_peak_rss_mb"] / row["on_peak_rss_mb"]
        row["time_ratio"] = row["off_seconds"] / row["on_seconds"]
        print(f"  pattern {size} px: on {row['on_peak_rss_mb']:.0f} MB {row['on_seconds']:.2f} s/eval | off "
              f"{row['off_peak_rss_mb']:.0f} MB {row['off_seconds']:.2f} s/eval | off/on memory "
              f"{row['memory_ratio']:.2f}, time {row['time_ratio']:.2f}", flush=True)
        rows.append(row)
    return rows


#: (size px, evaluations) of the single-scale runs the estimate is fitted to (``--fit``)
FIT_RUNS = ((256, 25), (384, 3), (512, 25), (768, 3), (768, 25), (1024, 25))


def _fit_child(size: str, evaluations: str) -> None:
    from bench.bench_printsize import CONTENT, STYLE
    from bench.common import features_model
    from nst_core.api import stylize
    image, result = stylize(CONTENT, STYLE, size=int(size), scales=1, iterations=int(evaluations),
                            model=features_model(CACHE), device="cpu")
    print(json.dumps(dict(peak_rss_mb=_status_mb("VmHWM"), pixels=image.shape[0] * image.shape[1],
                          pairs=min(20, int(evaluations) - 1))))


def section_fit(schedule_rows: dict) -> dict:
    """Peaks of single-scale runs (``FIT_RUNS``, our lbfgs, history 20) plus the default schedules measured above
    (their last scale's pixels and pairs), and the estimate ``BASE + pixels * (PIXEL + 24 * pairs)`` refitted:
    the pairs' 24 bytes per pixel each are known (float32 s and y), BASE and PIXEL are chosen for the smallest
    largest relative error."""
    from nst_core.process import memory
    from nst_core import schedule
    from nst_core import api as transfer
    from nst_core.spec import make, resolve
    from nst_core.inputs.images import open_image, resized_shape
    points = []
    for size, evaluations in FIT_RUNS:
        proc = subprocess.run([sys.executable, __file__, "--fit-child", str(size), str(evaluations)],
                              env=dict(os.environ, NST_BENCH_CODE=str(REPO)), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        points.append(dict(run=f"{size} px, {evaluations} evaluations", **r))
        print(f"  fit: {points[-1]['run']}: {r['peak_rss_mb']:.0f} MB", flush=True)
    from bench.bench_printsize import content_for
    for name, row in schedule_rows.items():
        content, size = content_for(name)
        im = open_image(content)
        h, w = resized_shape(im.width, im.height, size)
        opt = resolve(make("stylize", size=size))
        points.append(dict(run=f"{name}: default schedule", peak_rss_mb=row["after"]["peak_rss_mb"], pixels=h * w,
                           pairs=schedule.histories(opt)[-1]))
    best = None
    for base in range(100, 401, 5):
        for pixel in range(300, 1201, 2):
            errs = [(base + p["pixels"] * (pixel + 24.0 * p["pairs"]) / 2**20) / p["peak_rss_mb"] - 1 for p in points]
            worst = max(abs(e) for e in errs)
            if best is None or worst < best[0]:
                best = (worst, base, pixel, errs)
    worst, base, pixel, errs = best
    for p, e in zip(points, errs):
        p.update(fitted_error=e, current_estimate_error=memory.estimate_peak_mb(p["pixels"], "lbfgs", p["pairs"],
                                                                                p["pairs"] + 1) / p["peak_rss_mb"] - 1)
        print(f"  fit: {p['run']}: {p['pixels']} px, {p['pairs']} pairs, {p['peak_rss_mb']:.0f} MB; refitted "
              f"{100 * e:+.1f} %, memory.py's estimate now {100 * p['current_estimate_error']:+.1f} %", flush=True)
    print(f"  fit: BASE_MB = {base}, PIXEL_BYTES = {pixel} (largest error {100 * worst:.1f} %)", flush=True)
    return dict(points=points, base_mb=base, pixel_bytes=pixel, largest_error=worst)


def _snapshot(rev: str, where: Path) -> Path:
    """The tree of ``rev`` exported into ``where``/code (git archive): the 'before' code; ``where``/shared links to
    this checkout's data directory (``../shared``), which the snapshot's bench.common looks for next to it."""
    code = where / "code"
    code.mkdir()
    (where / "shared").symlink_to(REPO.parent / "shared")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    return code


def spawn(code: Path, size_name: str, out: Path, breakdown: bool = False) -> dict:
    """One fresh child running this script with nst_core imported from ``code``; the inputs (bench_printsize's
    rules), the model file and the images are this checkout's."""
    from bench.bench_printsize import STYLE, content_for
    from bench.common import features_model
    content, size = content_for(size_name)
    env = dict(os.environ, NST_BENCH_T0=repr(time.time()), NST_BENCH_CODE=str(code), NST_BENCH_STYLE=str(STYLE),
               NST_BENCH_MODEL=str(features_model(CACHE)))
    cmd = [sys.executable, __file__, "--child", str(content), str(size), str(out)]
    proc = subprocess.run(cmd + (["--breakdown"] if breakdown else []), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{code} {size_name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["2048", "a4"])
    ap.add_argument("--before", default="main", help="git revision to compare against (default main)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per version and size; medians (default 3)")
    ap.add_argument("--breakdown", action="store_true", help="one more instrumented run of this checkout per size")
    ap.add_argument("--pattern-sizes", type=int, nargs="*", default=[1024, 2048],
                    help="sizes of the memory-pattern section (none: skip it; default 1024 2048)")
    ap.add_argument("--skip-schedule", action="store_true", help="only the memory-pattern section")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--pattern-child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--eval-sizes", type=int, nargs="*", default=[1024, 2048],
                    help="sizes of the one-evaluation section (none: skip it; default 1024 2048)")
    ap.add_argument("--eval-child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--fit", action="store_true", help="refit memory.estimate_peak_mb (single-scale runs)")
    ap.add_argument("--fit-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if argv is None:  # as `nst` runs: malloc with huge pages where possible (nst_core/memory.py)
        from nst_core.process import memory
        memory.reexec_with_huge_pages()
    if args.child:
        return _child(*args.child, args.breakdown)
    if args.pattern_child:
        return _pattern_child(*args.pattern_child)
    if args.eval_child:
        return _eval_child(*args.eval_child)
    if args.fit_child:
        return _fit_child(*args.fit_child)
    from bench.common import load_avg, save_json, start
    from bench.bench_printsize import content_for
    results = start(CACHE)
    results.update(before_rev=args.before, load_before=load_avg(), sizes={})
    print(f"before: {args.before}; load average {results['load_before']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"before": _snapshot(args.before, Path(tmp)), "after": REPO}
        if args.eval_sizes:
            results["eval"] = section_eval(args.eval_sizes, versions["before"], args.repeats)
        if args.pattern_sizes:
            results["pattern"] = section_pattern(args.pattern_sizes, args.repeats)
        for name in [] if args.skip_schedule else args.sizes:
            content_for(name)  # the A4 crop, made once here
            runs = {v: [] for v in versions}
            for _ in range(args.repeats):
                for v, code in versions.items():
                    r = spawn(code, name, CACHE / f"memory_{name}_{v}.png")
                    runs[v].append(r)
                    print(f"  {name} {v}: peak {r['peak_rss_mb']:.0f} MB, {r['seconds']:.1f} s "
                          f"(load {load_avg()})", flush=True)
            row = {v: dict(peak_rss_mb=statistics.median(r["peak_rss_mb"] for r in rs),
                           seconds=statistics.median(r["seconds"] for r in rs), runs=rs) for v, rs in runs.items()}
            row["memory_ratio"] = row["after"]["peak_rss_mb"] / row["before"]["peak_rss_mb"]
            row["time_ratio"] = row["after"]["seconds"] / row["before"]["seconds"]
            print(f"  {name}: before {row['before']['peak_rss_mb']:.0f} MB {row['before']['seconds']:.1f} s | after "
                  f"{row['after']['peak_rss_mb']:.0f} MB {row['after']['seconds']:.1f} s | after/before memory "
                  f"{row['memory_ratio']:.2f}, time {row['time_ratio']:.2f}", flush=True)
            if args.breakdown:
                b = spawn(REPO, name, CACHE / f"memory_{name}_breakdown.png", breakdown=True)
                row["breakdown"] = b["breakdown"]
                print(f"  {name} breakdown (last scale, medians over its {b['breakdown']['calls']} ORT calls): "
                      f"resident at a call's start {b['breakdown']['rss_at_entry_b_per_px']:.0f} B/px (NumPy "
                      f"{b['breakdown']['numpy_at_entry_b_per_px']:.0f}), added during the call "
                      f"{b['breakdown']['ort_call_b_per_px']:.0f} B/px; peak {b['peak_rss_mb']:.0f} MB", flush=True)
            results["sizes"][name] = row
    if args.fit:
        results["fit"] = section_fit({k: v for k, v in results["sizes"].items()})
    results["load_after"] = load_avg()
    print(f"wrote {save_json('memory', results)}")


if __name__ == "__main__":
    main()
