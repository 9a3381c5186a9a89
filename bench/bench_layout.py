"""ORT's NCHWc layout rewrite (NchwcTransformer, part of ORT_ENABLE_ALL) on and off, side by side in one run.

    python bench/bench_layout.py [--sizes 256 512 1024] [--repeats 7]

Per-evaluation time of the one-session objective (CS231n's starry_night problem, as bench_objective.py builds it)
and of the split path's forward + VJP, at each size, with the rewrite on (ORT's default) and off
(``optimization.disable_specified_optimizers = NchwcTransformer``). The two sessions are built from the same model
and timed in alternation (on, off, on, off, ...), so a load change on the machine hits both; medians and the ratio
off/on are printed and written to bench/results/layout.json.

Why: the rewrite is CPU-dependent (NCHWc blocks of 8 floats with AVX2, 16 with AVX-512), and on one AVX-512
machine it changed the sign of a pre-activation that float32 cannot resolve (DESIGN-NOTES.md, "ReLU near-ties").
Whether to keep it is a question of speed only; this measures it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from bench.bench_objective import ours_objective  # noqa: E402
from bench.common import machine, save_json  # noqa: E402

SETTINGS = {"on": "all", "off": "no-layout"}  # nst_core.network.model.OPTIMIZATIONS


def build(size: int, optimization: str, fused: bool):
    obj, x0 = ours_objective(size, fused=fused, optimization=optimization)
    obj(x0)  # builds the session now, under this setting
    return obj, x0


def alternate(fns: dict, repeats: int) -> dict:
    """{name: median seconds}, the callables run in turn `repeats` times after one warm-up each."""
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    results = dict(machine=machine(), rows=[])
    print(f"machine: {results['machine']}", flush=True)
    for size in args.sizes:
        for fused in (True, False):
            objs = {k: build(size, v, fused) for k, v in SETTINGS.items()}
            med = alternate({k: (lambda o=o: o[0](o[1])) for k, o in objs.items()}, args.repeats)
            row = dict(size=size, path="one-session" if fused else "split", on_s=med["on"], off_s=med["off"],
                       ratio_off_on=med["off"] / med["on"])
            results["rows"].append(row)
            print(f"  {size:5d} px {row['path']:11s}: rewrite on {med['on']*1e3:8.1f} ms | off {med['off']*1e3:8.1f}"
                  f" ms | off/on {row['ratio_off_on']:.3f}", flush=True)
            objs = None
    print(f"wrote {save_json('layout', results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
