"""Browser host speed: evaluations per second in headless Chromium (onnxruntime-web, WebAssembly, 1 and 2 threads)
against `nst stylize` on the same problem, side by side in one run.

    python bench/bench_web.py [--sizes 128 256 512] [--repeats 3] [--threads 1 2]

The problem: Tübingen in Starry Night's style (the default bundle: starry_night's weights, style scale 100, style
image at 192 px), content at each --size, from PNG copies of the shared JPEGs (both sides decode the same pixels).
Each repeat runs, for each size, the browser at each thread count (and the largest with ORT's idle threads
spinning, session.intra_op.allow_spinning = 1, against the host's default 0) (window.nst.run through bench/web_driver.mjs, one
chromium kept open, a new Web Worker per run) and then `nst stylize ... --log`, so load changes on the machine hit
all of them alike. The rate is (N - 1) / (t_N - t_1) over the run's own history (evaluation 1's warm-up left out;
the same rule on both sides: seconds from the start of the optimisation, loading and targets excluded). Medians
over the repeats, and their ratios. First, section jpeg: how Chromium's decoding of the shared JPEGs differs from
Pillow's, and the first loss at 128 px with JPEG inputs, page against `nst stylize`. Writes bench/results/web.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import IMAGES, REPO, save_json, start  # noqa: E402

CACHE = REPO / "bench" / "results"
CLI = [sys.executable, str(REPO / "cli.py")]
ITERATIONS = {128: 30, 256: 20, 512: 12}


def rate(history: list[dict]) -> float:
    """Evaluations per second after the first: (N - 1) / (t_N - t_1)."""
    return (len(history) - 1) / (history[-1]["seconds"] - history[0]["seconds"])


def setup(tmp: Path, env: dict) -> tuple[Path, list[Path]]:
    from nst_core.inputs.images import open_image

    bundle = tmp / "bundle"
    subprocess.run(CLI + ["bundle", str(bundle)], env=env, check=True, capture_output=True, timeout=600)
    (bundle / "inputs").mkdir()
    pngs = []
    for name in ("tubingen", "starry_night"):
        pngs.append(bundle / "inputs" / f"{name}.png")
        open_image(IMAGES / f"{name}.jpg").save(pngs[-1])
        shutil.copy(IMAGES / f"{name}.jpg", bundle / "inputs" / f"{name}.jpg")
    return bundle, pngs


def jpeg_section(browser: "Browser", bundle: Path, tmp: Path, env: dict) -> dict:
    """Chromium's JPEG decoding against Pillow's (libjpeg) on the shared JPEGs, and what it does to the first loss:
    the page on the JPEGs against `nst stylize` on the same JPEGs (128 px)."""
    import base64

    import numpy as np
    from nst_core.inputs.images import open_image

    out = {}
    for name in ("tubingen", "starry_night"):
        r = browser.ask({"decode": f"{browser.url}bundle/inputs/{name}.jpg"})
        page = np.frombuffer(base64.b64decode(r["rgb"]), np.uint8).reshape(r["height"], r["width"], 3)
        pil = np.asarray(open_image(bundle / "inputs" / f"{name}.jpg"))
        d = np.abs(page.astype(int) - pil.astype(int))
        out[name] = {"max_abs_levels": int(d.max()), "mean_abs_levels": float(d.mean()),
                     "fraction_differing": float((d > 0).mean())}
    web = browser.run(ext="jpg", size=128, iterations=1, threads=1)["history"][0]["loss"]
    jpgs = [bundle / "inputs" / f"{n}.jpg" for n in ("tubingen", "starry_night")]
    nst = nst_stylize(jpgs, 128, 1, tmp, env)[0]["loss"]
    out["first_loss_128"] = {"web": web, "nst": nst, "rel": abs(web - nst) / nst}
    return out


def nst_stylize(pngs: list[Path], size: int, iterations: int, tmp: Path, env: dict) -> list[dict]:
    log, out = tmp / "log.csv", tmp / "out.png"
    subprocess.run(CLI + ["stylize", *map(str, pngs), "-o", str(out), "--size", str(size), "--iterations",
                          str(iterations), "--log", str(log)], env=env, check=True, capture_output=True, timeout=1800)
    with open(log, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


class Browser:
    """nst serve-web + bench/web_driver.mjs (one headless chromium), one window.nst.run per call."""

    def __init__(self, bundle: Path, env: dict):
        self.server = subprocess.Popen(CLI + ["serve-web", "--bundle", str(bundle), "--port", "0"], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.url = re.match(r"serving (\S+)", self.server.stdout.readline()).group(1)
        self.driver = subprocess.Popen(["node", str(REPO / "bench" / "web_driver.mjs"), self.url],
                                       cwd=REPO / "hosts" / "web", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True)
        self.info = json.loads(self.driver.stdout.readline())

    def run(self, ext: str = "png", **options) -> dict:
        options.update(content=f"{self.url}bundle/inputs/tubingen.{ext}",
                       style=f"{self.url}bundle/inputs/starry_night.{ext}")
        return self.ask(options)

    def ask(self, options: dict) -> dict:
        self.driver.stdin.write(json.dumps(options) + "\n")
        self.driver.stdin.flush()
        r = json.loads(self.driver.stdout.readline())
        if "error" in r:
            raise RuntimeError(f"browser run failed: {r['error']}")
        return r

    def close(self):
        self.driver.stdin.close()
        self.driver.wait(timeout=60)
        self.server.terminate()
        self.server.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", type=int, default=[128, 256, 512])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--spinning", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the largest thread count with ORT's idle threads spinning (default: on)")
    args = ap.parse_args()
    results = start(CACHE)
    env = dict(os.environ, NST_HOME=str(CACHE))
    with open("/proc/loadavg") as f:
        results["load_before"] = f.read().split()[:3]
    tmp = Path(tempfile.mkdtemp(prefix="nst-bench-web-"))
    browser = None
    try:
        bundle, pngs = setup(tmp, env)
        browser = Browser(bundle, env)
        results["browser"] = browser.info
        print(f"browser: {browser.info['userAgent']}, cross-origin isolated {browser.info['crossOriginIsolated']}")
        results["jpeg"] = jpeg_section(browser, bundle, tmp, env)
        print("JPEG decoding, Chromium vs Pillow: " + "; ".join(
            f"{k}: max {v['max_abs_levels']} levels, mean {v['mean_abs_levels']:.3f}, {100 * v['fraction_differing']:.1f} % "
            "of values differ" for k, v in results["jpeg"].items() if k != "first_loss_128")
            + f"; first loss at 128 px on the JPEGs, page vs nst stylize: {results['jpeg']['first_loss_128']['rel']:.2g} relative",
            flush=True)
        configs = [(f"web_{t}", t, False) for t in args.threads]
        if args.spinning and max(args.threads) > 1:
            configs.append((f"web_{max(args.threads)}_spin", max(args.threads), True))
        runs = {size: {**{c[0]: [] for c in configs}, "nst": [], "first_loss": {}} for size in args.sizes}
        for rep in range(args.repeats):
            for size in args.sizes:
                n = ITERATIONS.get(size, 10)
                for key, t, spin in configs:
                    r = browser.run(size=size, iterations=n, threads=t, spinning=spin)
                    assert r["threads"] == t, r["threads"]
                    runs[size][key].append(rate(r["history"]))
                    runs[size]["first_loss"][key] = r["history"][0]["loss"]
                h = nst_stylize(pngs, size, n, tmp, env)
                runs[size]["nst"].append(rate(h))
                runs[size]["first_loss"]["nst"] = h[0]["loss"]
                print(f"repeat {rep + 1} size {size} ({n} evaluations): " + ", ".join(
                    f"{k} {v[-1]:.2f}/s" for k, v in runs[size].items() if k != "first_loss"), flush=True)
        table = {}
        names = {k: f"browser, {t} thread{'s' if t > 1 else ''}{', spinning' if spin else ''} (eval/s)"
                 for k, t, spin in configs}
        print("\n| size | evaluations | " + " | ".join(names.values())
              + " | nst stylize (eval/s) | nst / browser 1 thread | browser 2 / 1 threads | first loss, browser vs nst |")
        print("|---" * (6 + len(configs)) + "|")
        for size in args.sizes:
            med = {k: statistics.median(v) for k, v in runs[size].items() if k != "first_loss"}
            fl = runs[size]["first_loss"]
            row = dict(medians=med, runs={k: v for k, v in runs[size].items() if k != "first_loss"},
                       iterations=ITERATIONS.get(size, 10), first_loss=fl,
                       nst_over_web1=med["nst"] / med["web_1"] if "web_1" in med else None,
                       web2_over_web1=med["web_2"] / med["web_1"] if {"web_1", "web_2"} <= set(med) else None,
                       first_loss_rel=abs(fl[f"web_{args.threads[0]}"] - fl["nst"]) / fl["nst"])
            table[size] = row
            print(f"| {size} | {row['iterations']} | " + " | ".join(f"{med[k]:.2f}" for k in names)
                  + f" | {med['nst']:.2f} | {row['nst_over_web1'] or float('nan'):.2f} | "
                  f"{row['web2_over_web1'] or float('nan'):.2f} | {row['first_loss_rel']:.1e} |")
        results["sizes"] = table
        with open("/proc/loadavg") as f:
            results["load_after"] = f.read().split()[:3]
        print(f"load average before / after: {results['load_before']} / {results['load_after']}")
    finally:
        if browser:
            browser.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {save_json('web', results)}")


if __name__ == "__main__":
    main()
