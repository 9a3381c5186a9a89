"""`nst stylize` of two versions of this repository side by side in one run: wall time and peak memory.

    python bench/bench_versions.py [--old REV] [--sizes 192 512] [--rounds 5]

REV (default: 5402daf, the last commit before nst_core was laid out by stage) is checked out into a temporary git
worktree; each round runs the old and the new `cli.py stylize` (Tübingen, Starry Night, the default job at each
size, 200 L-BFGS evaluations at the first scale, seed 0, the same exported model), alternating which goes first.
Wall time is the whole process (start-up included); memory is the child's ru_maxrss. Prints medians and ratios
new/old and writes bench/results/versions.json.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import IMAGES, load_avg, save_json  # noqa: E402


def run_once(tree: Path, size: int, out: Path) -> tuple[float, float]:
    """(seconds, peak MB) of one `nst stylize` of the tree at ``tree``."""
    cmd = [sys.executable, str(tree / "cli.py"), "stylize", str(IMAGES / "tubingen.jpg"),
           str(IMAGES / "starry_night.jpg"), "--size", str(size), "--seed", "0", "-q", "-o", str(out)]
    env = dict(os.environ, PYTHONPATH=str(tree))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{tree}: nst stylize failed: {proc.stderr.read().decode()[-500:]}")
    return seconds, usage.ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", default="5402daf")
    ap.add_argument("--sizes", type=int, nargs="+", default=[192, 512])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.old], check=True,
                       capture_output=True)
        try:
            for size in args.sizes:
                times = {"old": [], "new": []}
                peaks = {"old": [], "new": []}
                for r in range(args.rounds):
                    order = [("old", old), ("new", REPO)] if r % 2 == 0 else [("new", REPO), ("old", old)]
                    for name, tree in order:
                        s, mb = run_once(tree, size, Path(tmp) / f"{name}.png")
                        times[name].append(s)
                        peaks[name].append(mb)
                row = {"size": size, **{f"{k}_s": statistics.median(v) for k, v in times.items()},
                       **{f"{k}_mb": statistics.median(v) for k, v in peaks.items()}, "rounds": args.rounds,
                       "all": {"times": times, "peaks": peaks}}
                row["time_ratio"] = row["new_s"] / row["old_s"]
                row["memory_ratio"] = row["new_mb"] / row["old_mb"]
                rows.append(row)
                print(f"{size} px: old {row['old_s']:.2f} s {row['old_mb']:.0f} MB, new {row['new_s']:.2f} s "
                      f"{row['new_mb']:.0f} MB; new/old time {row['time_ratio']:.3f}, memory {row['memory_ratio']:.3f}"
                      f" (medians of {args.rounds}; load {load_avg()})", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], capture_output=True)
    save_json("versions", {"old": args.old, "rows": rows})


if __name__ == "__main__":
    main()
