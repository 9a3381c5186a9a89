"""L-BFGS in NumPy (optim.lbfgs) against SciPy's L-BFGS-B (optim.lbfgsb) and torch.optim.LBFGS.

    python -m bench.bench_lbfgs [--skip quality overhead] [--quality-size 192] [--start content|noise]
                                [--budget 300] [--only SUBSTRING ...] [--repeats 5] [--output lbfgs]

Sections:
  quality   CS231n's starry_night objective (bench.bench_objective) at 192 px from the content image (--start noise:
            uniform(0, 1) noise in normalised space, seed 0; torch starts from the same point). The target is
            the best loss torch.optim.LBFGS (history 100, lr 1, no line search; float32) reaches in 200
            evaluations. For every optimizer variant: best loss after 50 / 100 / 200 evaluations, the first
            evaluation reaching the target, wall seconds to it, and the optimizer's own time (wall time minus time
            inside the objective) per evaluation. Evaluation counts are deterministic; seconds depend on the load.
  overhead  optimizer time per evaluation on a cheap diagonal quadratic (objective ~1 ms) at n = 3*192*256 and
            n = 3*512*683, with the memory full: the wall time between evaluations minus the time in the objective,
            over the last 40 evaluations of a run of history + 41; median of --repeats runs.
Prints a table per section and writes bench/results/<output>.json; torch's reference run is cached in
bench/results/lbfgs_torch_reference_<size>_<start>.json (--fresh-torch reruns it).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from bench.bench_objective import CACHE, ours_objective, torch_objective  # noqa: E402
from bench.common import save_json  # noqa: E402

CHECKPOINTS = (50, 100, 200)


class Timed:
    """Wraps an objective: accumulates the seconds spent inside it, and keeps each call's start and duration."""

    def __init__(self, objective):
        self.objective = objective
        self.seconds = 0.0
        self.calls = 0
        self.starts: list = []
        self.durations: list = []

    def __call__(self, x):
        t = time.perf_counter()
        out = self.objective(x)
        dt = time.perf_counter() - t
        self.seconds += dt
        self.calls += 1
        self.starts.append(t)
        self.durations.append(dt)
        return out

    def steady_overhead(self, last: int) -> float:
        """Seconds per evaluation spent outside the objective over the last `last` evaluations (from the start of
        evaluation -last-1 to the start of the final one)."""
        k = len(self.starts) - 1 - last
        return ((self.starts[-1] - self.starts[k]) - sum(self.durations[k:-1])) / last


def variants(bounds):
    """name -> callable(objective, x0, budget, callback) for every optimizer configuration compared."""
    from nst_core import optim
    out = {
        "scipy L-BFGS-B h20 bounded": lambda o, x, b, cb: optim.lbfgsb(o, x, b, history=20, bounds=bounds, callback=cb),
        "scipy L-BFGS-B h20": lambda o, x, b, cb: optim.lbfgsb(o, x, b, history=20, callback=cb),
    }
    for step in ("fixed", "armijo"):
        for h in (5, 10, 20, 50, 100):
            out[f"twoloop {step} h{h}"] = (
                lambda o, x, b, cb, h=h, step=step: optim.lbfgs(o, x, b, history=h, step=step, callback=cb))
        for h in (10, 20, 100):
            out[f"twoloop {step} h{h} bounded"] = (
                lambda o, x, b, cb, h=h, step=step: optim.lbfgs(o, x, b, history=h, step=step,
                                                                        bounds=bounds, callback=cb))
    for h in (20, 100):  # the default keeps its pairs in float32; the same runs with float64 pairs
        out[f"twoloop armijo h{h} bounded float64"] = (
            lambda o, x, b, cb, h=h: optim.lbfgs(o, x, b, history=h, bounds=bounds, memory_dtype="float64",
                                                 callback=cb))
    return out


def best_so_far(losses) -> np.ndarray:
    arr = np.asarray(losses, dtype=np.float64)
    return np.minimum.accumulate(np.where(np.isfinite(arr), arr, np.inf))


def start_image(cx: np.ndarray, start: str) -> np.ndarray:
    """The start point, float64 [1, 3, h, w]: the content image, or uniform(0, 1) noise in normalised space
    (CS231n's init_random) with seed 0."""
    if start == "content":
        return cx.astype(np.float64)
    return np.random.default_rng(0).uniform(0.0, 1.0, cx.shape)


def _torch_reference(size: int, start: str, fresh: bool) -> dict:
    """torch.optim.LBFGS's 200 evaluations (losses, seconds), cached in bench/results: the run is deterministic and
    takes minutes on a busy machine."""
    import json
    path = CACHE / f"lbfgs_torch_reference_{size}_{start}.json"
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    ref, loss_fn, cx = torch_objective(size)
    run = ref.lbfgs_run(loss_fn, start_image(cx, start), evaluations=200, history=100)
    out = {k: run[k] for k in ("best", "last", "evaluations", "losses", "seconds")}
    path.write_text(json.dumps(out))
    return out


def section_quality(size: int, budget: int, only=None, fresh: bool = False, start: str = "content"):
    from nst_core.inputs.images import pixel_bounds
    run = _torch_reference(size, start, fresh)
    target = run["best"]
    torch_best = best_so_far(run["losses"])
    torch_row = dict(name="torch.optim.LBFGS h100 (float32)", evaluations=len(run["losses"]),
                     **{f"loss_{k}": float(torch_best[k - 1]) for k in CHECKPOINTS},
                     evals_to_target=int(np.argmax(torch_best <= target)) + 1, seconds_to_target=run["seconds"],
                     overhead_ms_per_eval=None, status="budget", info={})
    print(f"  quality {size} px from {start}: target = torch.optim.LBFGS best after 200 evaluations = {target:.6g} "
          f"({run['seconds']:.1f} s)", flush=True)
    _print_header()
    _print_row(torch_row)
    obj, cx = ours_objective(size)
    x0 = start_image(cx, start)
    lo, hi = pixel_bounds(x0.shape)
    bounds = (lo.reshape(x0.shape), hi.reshape(x0.shape))
    rows = [torch_row]
    for name, fn in variants(bounds).items():
        if only and not any(s in name for s in only):
            continue
        timed = Timed(obj)
        reached = {}
        t_start = time.perf_counter()

        def callback(record, x):
            if "evaluation" not in reached and record.loss <= target:
                reached.update(evaluation=record.evaluation, seconds=time.perf_counter() - t_start)

        res = fn(timed, x0, budget, callback)
        total = time.perf_counter() - t_start
        best = best_so_far(res.history_columns()["loss"])
        row = dict(name=name, evaluations=res.n_evals,
                   **{f"loss_{k}": (float(best[k - 1]) if len(best) >= k else None) for k in CHECKPOINTS},
                   evals_to_target=reached.get("evaluation"), seconds_to_target=reached.get("seconds"),
                   overhead_ms_per_eval=1e3 * (total - timed.seconds) / max(res.n_evals, 1),
                   objective_ms_per_eval=1e3 * timed.seconds / max(res.n_evals, 1), total_seconds=total,
                   final_loss=res.loss, status=res.status, info=_jsonable(res.info))
        rows.append(row)
        _print_row(row)
    return dict(size=size, start=start, shape=list(x0.shape), target=target, torch_losses=run["losses"], rows=rows)


def _jsonable(info: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, list, type(None))) else str(v)) for k, v in info.items()}


def _print_header():
    print(f"  {'optimizer':34s} {'@50':>10s} {'@100':>10s} {'@200':>10s} {'evals->tgt':>10s} {'s->tgt':>7s} "
          f"{'opt ms/ev':>9s} {'obj ms/ev':>9s}  info", flush=True)


def _print_row(r):
    def num(v, fmt):
        return format(v, fmt) if v is not None else "-"
    info = r.get("info") or {}
    extra = " ".join(f"{k}={info[k]}" for k in ("iterations", "pairs_skipped", "backtracks", "resets", "restarts")
                     if k in info)
    print(f"  {r['name']:34s} {num(r['loss_50'], '10.1f')} {num(r['loss_100'], '10.1f')} {num(r['loss_200'], '10.1f')} "
          f"{num(r['evals_to_target'], '10d')} {num(r['seconds_to_target'], '7.1f')} "
          f"{num(r['overhead_ms_per_eval'], '9.1f')} {num(r.get('objective_ms_per_eval'), '9.1f')}  {extra}",
          flush=True)


def quadratic(n: int, seed: int = 0):
    """f(x) = 1/2 sum(a * (x - c)^2), a log-uniform in [1e-2, 1e2]: cheap (two passes over x) and ill-conditioned
    enough that L-BFGS keeps moving. Returns (objective, x0 float64 [n])."""
    rng = np.random.default_rng(seed)
    a = np.exp(rng.uniform(np.log(1e-2), np.log(1e2), n))
    c = rng.standard_normal(n)
    r = np.empty(n)

    def objective(x):
        np.subtract(x.reshape(-1), c, out=r)
        g = a * r
        return 0.5 * float(np.dot(g, r)), g, {}

    return objective, np.zeros(n)


def section_overhead(sizes, repeats: int, steady: int = 40, only=None):
    """Optimizer seconds per evaluation, measured over the last `steady` evaluations of a run of history + steady
    + 1 evaluations (so the memory is full: the steady state of a long run)."""
    from nst_core import optim
    box = (-1.0, 1.0)
    configs = [("scipy L-BFGS-B h5", 5, lambda o, x, b: optim.lbfgsb(o, x, b, history=5)),
               ("scipy L-BFGS-B h20", 20, lambda o, x, b: optim.lbfgsb(o, x, b, history=20)),
               ("scipy L-BFGS-B h20 bounded", 20, lambda o, x, b: optim.lbfgsb(o, x, b, history=20, bounds=box))]
    for h in (5, 10, 20, 50, 100):
        configs.append((f"twoloop fixed h{h}", h,
                        lambda o, x, b, h=h: optim.lbfgs(o, x, b, history=h, step="fixed")))
    for h in (10, 20):
        configs.append((f"twoloop armijo h{h}", h,
                        lambda o, x, b, h=h: optim.lbfgs(o, x, b, history=h, step="armijo")))
        configs.append((f"twoloop armijo h{h} bounded", h,
                        lambda o, x, b, h=h: optim.lbfgs(o, x, b, history=h, step="armijo", bounds=box)))
        configs.append((f"twoloop armijo h{h} bounded float64", h,
                        lambda o, x, b, h=h: optim.lbfgs(o, x, b, history=h, step="armijo", bounds=box,
                                                         memory_dtype="float64")))
    if only:
        configs = [c for c in configs if any(s in c[0] for s in only)]
    rows = []
    for n in sizes:
        obj, x0 = quadratic(n)
        for name, h, fn in configs:
            evaluations = h + steady + 1
            per_eval = []
            for _ in range(repeats):
                timed = Timed(obj)
                res = fn(timed, x0, evaluations)
                assert res.n_evals == evaluations, res.message
                per_eval.append(timed.steady_overhead(steady))
            row = dict(n=n, name=name, evaluations=evaluations, overhead_ms_per_eval=1e3 * statistics.median(per_eval),
                       min_ms=1e3 * min(per_eval), max_ms=1e3 * max(per_eval), status=res.status)
            rows.append(row)
            print(f"  n={n:8d} {name:36s} optimizer {row['overhead_ms_per_eval']:7.2f} ms/eval (median of {repeats}; "
                  f"min {row['min_ms']:.2f}, max {row['max_ms']:.2f})", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quality-size", type=int, default=192)
    ap.add_argument("--budget", type=int, default=300, help="evaluations per variant in the quality section")
    ap.add_argument("--only", nargs="*", help="run only the variants whose name contains one of these")
    ap.add_argument("--overhead-sizes", type=int, nargs="+", default=[3 * 192 * 256, 3 * 512 * 683])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--start", choices=["content", "noise"], default="content")
    ap.add_argument("--fresh-torch", action="store_true", help="rerun torch's reference instead of its cache")
    ap.add_argument("--output", default="lbfgs", help="name of the JSON file in bench/results")
    ap.add_argument("--skip", nargs="*", default=[], choices=["quality", "overhead"])
    args = ap.parse_args(argv)
    from bench.common import start
    results = start(CACHE)
    if "overhead" not in args.skip:
        results["overhead"] = section_overhead(args.overhead_sizes, args.repeats, only=args.only)
    if "quality" not in args.skip:
        results["quality"] = section_quality(args.quality_size, args.budget, args.only, args.fresh_torch,
                                             args.start)
    print(f"wrote {save_json(args.output, results)}")


if __name__ == "__main__":
    main()
