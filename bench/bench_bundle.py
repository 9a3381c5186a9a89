"""The host bundle: the float32-only objective against the float64-accumulating one, why L-BFGS histories of two
hosts drift apart, and the Node host's wall time against `nst stylize`.

    python -m bench.bench_bundle [--skip precision sensitivity timing] [--sizes 192 512 1024] [--repeats 5]

Sections:
  precision    starry_night's objective (L-BFGS weights, style scale 100, the content and TV weights calibrated to
               the size as nst stylize and a host do: k of transfer.calibration, the bundle's from its manifest's
               calibration section, checked equal) at x = Tübingen + noise (seed 0, in the pixel box), smaller
               edge 192 / 512 / 1024 px. Reference: the split path (NumPy losses, float64
               sums, TV in float64 on float64 x). Against it: the current fused objective (float64 sums in ONNX,
               TV inside: float32 differences, float64 sums), the fused objective as it was before issue 25 (TV in
               NumPy in float64), and the bundle's objective.onnx (no float64 anywhere, tree-summed float32
               squares, TV inside). Loss and part relative errors, gradient relative L2 at x = the noisy start and
               x = the content image (smooth: TV's differences small), and median seconds per evaluation at the
               noisy start (--repeats, after one warm-up, the objectives alternating).
  sensitivity  128 px, 50 L-BFGS evaluations, style scale 1 and 100: the largest and the final relative gap of the
               loss history between `optim.lbfgs` as `nst stylize` runs it and the same run with a perturbation:
               loss x (1 + 1e-7), gradient x (1 + 1e-7 N(0,1)) elementwise, float64 pairs, the bundle's objective;
               and the Node host (float32 / float64 pairs) against Python on the bundle's objective.
  timing       `nst bundle`, then `node hosts/node/stylize.mjs` against `nst stylize` on the same problem (the
               default: starry_night, 192 px, 200 evaluations, tubingen.jpg / starry_night.jpg), whole commands,
               alternated, median of 3 each; then where Node's time goes (bench/node_time_split.mjs): one
               objective.onnx call, and the optimizer's own ms per evaluation.
Writes bench/results/bundle.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import IMAGES, features_model, save_json, start  # noqa: E402

CACHE = REPO / "bench" / "results"
NODE_HOST = REPO / "hosts" / "node"


def _problem(size: int, style_scale: float = 100.0, content=IMAGES / "tubingen.jpg",
             style=IMAGES / "starry_night.jpg"):
    from nst_core import api as transfer
    from nst_core.spec import make, resolve
    return transfer.prepare("stylize", str(content), str(style), size=size, style_size=size, style_scale=style_scale,
                            model=str(features_model(CACHE)), device="cpu")


def _bundle(directory: Path, size: int, style_scale: float) -> Path:
    from nst_core.hosts import bundle
    from nst_core import api as transfer
    from nst_core.spec import make, resolve
    opt = resolve(make("stylize", optimizer="lbfgs", size=size, style_size=size, style_scale=style_scale))
    bundle.write_bundle(directory, opt, model_path=features_model(CACHE))
    return directory


def _host_size_factor(directory: Path, size: int, content=IMAGES / "tubingen.jpg") -> float:
    """k of the bundle's manifest (its calibration section, docs/hosts.md) for ``content`` at ``size``, computed as
    a host does: (h_c * w_c) / (h * w), the content image's shapes at calibration.size and at size; 1 without
    calibration (size 0 or no section)."""
    from nst_core.hosts import bundle
    from nst_core.inputs.images import open_image, resized_shape
    _, manifest = bundle.load_manifest(directory)
    cal = manifest.get("calibration", {}).get("size", 0)
    image = open_image(content)
    h, w = resized_shape(image.width, image.height, size)
    if not cal:
        return 1.0
    h_c, w_c = resized_shape(image.width, image.height, cal)
    return (h_c * w_c) / (h * w)


def _bundle_objective(directory: Path, size: int, content=IMAGES / "tubingen.jpg", style=IMAGES / "starry_night.jpg",
                      expected_k: float | None = None):
    """The bundle's objective.onnx with its content and TV weights calibrated for ``size`` as a host does
    (``_host_size_factor``); ``expected_k``: nst's own k for the same problem (``transfer.calibration``), which
    the host's must equal."""
    from nst_core.hosts import bundle
    from nst_core.inputs.images import open_image, preprocess
    k = _host_size_factor(directory, size, content)
    if expected_k is not None and k != expected_k:
        raise RuntimeError(f"the manifest's calibration gives k = {k!r} at {size} px, nst stylize {expected_k!r}")
    return bundle.bundle_objective(directory, preprocess(open_image(content), size),
                                   preprocess(open_image(style), size), size_factor=k)


def _median_seconds(fn, x, repeats: int) -> float:
    fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def precision(sizes, repeats: int) -> list:
    from nst_core.losses import tv_loss
    from nst_core.objective import make_objective
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_bundle_"))
    try:
        for size in sizes:
            p = _problem(size)
            opt = p.job
            b = _bundle(tmp / f"b{size}", size, opt.style_scale)
            lo, hi = p.bounds
            rng = np.random.default_rng(0)
            noisy = np.clip(p.x0 + 0.3 * rng.standard_normal(p.x0.shape), lo, hi)
            fused = p.objective
            from nst_core.network.model import Network, load_model, tap_name
            from nst_core.objective import targets
            from nst_core.inputs.images import open_image, preprocess
            taps = [tap_name(k) for k in sorted({opt.content_layer, *opt.style_layers})]
            net = Network(load_model(features_model(CACHE), taps), taps, device="cpu")
            ct, grams = targets(net, preprocess(open_image(IMAGES / "tubingen.jpg"), size),
                                preprocess(open_image(IMAGES / "starry_night.jpg"), size), opt.content_layer,
                                opt.style_layers)
            cal = p.calibration  # the weights at this size, as nst stylize (and a host) uses them
            split = make_objective(net, content_target=ct, content_layer=opt.content_layer,
                                   content_weight=cal.content_weight, style_targets=grams,
                                   style_layers=opt.style_layers, style_weights=opt.effective_style_weights,
                                   tv_weight=cal.tv_weight, fused=False)
            f32 = _bundle_objective(b, size, expected_k=cal.size_factor)
            no_tv = make_objective(net, content_target=ct, content_layer=opt.content_layer,
                                   content_weight=cal.content_weight, style_targets=grams,
                                   style_layers=opt.style_layers, style_weights=opt.effective_style_weights,
                                   tv_weight=0.0)

            def numpy_tv(x, no_tv=no_tv, w=cal.tv_weight):  # the fused objective before issue 25: TV in NumPy
                loss, grad, parts = no_tv(x)
                l_tv, g_tv = tv_loss(x, w)
                return loss + l_tv, g_tv + grad, dict(parts, tv=l_tv)

            objectives = (("fused (float64 sums, TV inside)", fused), ("fused, TV in NumPy (before)", numpy_tv),
                          ("objective.onnx (float32)", f32))
            for start, x in (("noise", noisy), ("content", np.clip(p.x0, lo, hi))):
                rows += _precision_rows(size, start, x, split, objectives, repeats if start == "noise" else 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _precision_rows(size: int, start: str, x, split, objectives, repeats: int) -> list:
    """One row per objective: its loss, parts and gradient against the split path's at x; seconds per evaluation
    (medians of `repeats`, alternating objectives; none when 0)."""
    from nst_core.process.threads import single_threaded_blas
    rows = []
    with single_threaded_blas():
        ref = split(x)
        out = {name: fn(x) for name, fn in objectives}
        times = {name: [] for name, _ in objectives}
        for _ in range(repeats):
            for name, fn in objectives:
                t = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t)
        secs = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
    g_ref = ref[1].ravel()
    for name, (loss, grad, parts) in out.items():
        g = np.asarray(grad, np.float64).ravel()
        row = {"size": size, "start": start, "shape": list(x.shape), "objective": name,
               "loss_rel": abs(loss - ref[0]) / ref[0],
               **{f"{k}_rel": abs(parts[k] - ref[2][k]) / (abs(ref[2][k]) or 1.0)  # content 0 at the content
                  for k in ("content", "style", "tv")},
               "grad_rel_l2": float(np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref)),
               "seconds": secs[name], "loss": loss}
        rows.append(row)
        print(f"{size:5d} px {start:7s} {name:31s} loss {row['loss_rel']:.2e} (content {row['content_rel']:.1e}, "
              f"style {row['style_rel']:.1e}, tv {row['tv_rel']:.1e}), grad rel L2 {row['grad_rel_l2']:.2e}, "
              f"{row['seconds'] * 1e3:.1f} ms/eval", flush=True)
    return rows


def _history(objective, x0, bounds, evals, memory_dtype="float32"):
    from nst_core import optim
    from nst_core.process.threads import single_threaded_blas
    with single_threaded_blas():
        r = optim.lbfgs(objective, x0, evals, bounds=bounds, history=20, memory_dtype=memory_dtype)
    return np.array([h.loss for h in r.history])


def _gap(a, b) -> dict:
    rel = np.abs(a - b) / b
    return {"max": float(rel.max()), "at": int(rel.argmax()) + 1, "final": float(rel[-1])}


def _png_inputs(directory: Path) -> tuple[Path, Path]:
    from nst_core.inputs.images import open_image
    out = []
    for name in ("tubingen", "starry_night"):
        path = directory / f"{name}.png"
        open_image(IMAGES / f"{name}.jpg").save(path)
        out.append(path)
    return tuple(out)


def _node_history(bundle_dir: Path, content: Path, style: Path, size: int, evals: int, memory: str, out: Path):
    log = out / f"node_{memory}.csv"
    subprocess.run(["node", str(NODE_HOST / "stylize.mjs"), "--bundle", str(bundle_dir), str(content), str(style),
                    "-o", str(out / "node.png"), "--size", str(size), "--iterations", str(evals), "--memory", memory,
                    "--log", str(log), "-q"], check=True)
    return np.loadtxt(log, delimiter=",", skiprows=1)[:, 2]


def sensitivity(size: int = 128, evals: int = 50) -> list:
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_bundle_"))
    try:
        content, style = _png_inputs(tmp)
        for scale in (1.0, 100.0):
            p = _problem(size, scale, content, style)
            b = _bundle(tmp / f"b{int(scale)}", size, scale)
            rng = np.random.default_rng(0)

            def loss_up(x, f=p.objective):
                l, g, parts = f(x)
                return l * (1 + 1e-7), g, parts

            def grad_noise(x, f=p.objective):
                l, g, parts = f(x)
                return l, g * (1 + 1e-7 * rng.standard_normal(g.shape)), parts

            base = _history(p.objective, p.x0, p.bounds, evals)
            f32 = _bundle_objective(b, size, content, style, expected_k=p.calibration.size_factor)
            runs = {"loss x (1 + 1e-7)": _history(loss_up, p.x0, p.bounds, evals),
                    "gradient x (1 + 1e-7 N(0,1))": _history(grad_noise, p.x0, p.bounds, evals),
                    "float64 pairs": _history(p.objective, p.x0, p.bounds, evals, "float64"),
                    "bundle objective.onnx": _history(f32, p.x0, p.bounds, evals)}
            for name, h in runs.items():
                rows.append({"style_scale": scale, "run": name, "against": "nst stylize's lbfgs", **_gap(h, base)})
            if shutil.which("node"):
                b64 = _history(f32, p.x0, p.bounds, evals, "float64")
                n32 = _node_history(b, content, style, size, evals, "float32", tmp)
                n64 = _node_history(b, content, style, size, evals, "float64", tmp)
                rows.append({"style_scale": scale, "run": "Node host, float32 pairs", "against": "nst stylize's lbfgs",
                             **_gap(n32, base)})
                rows.append({"style_scale": scale, "run": "Node host, float64 pairs",
                             "against": "optim.lbfgs float64 pairs on objective.onnx", **_gap(n64, b64)})
            for r in rows[-7:]:
                if r["style_scale"] == scale:
                    print(f"scale {scale:5g}  {r['run']:32s} vs {r['against']:45s} max {r['max']:.2e} "
                          f"(evaluation {r['at']}), final {r['final']:.2e}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _python_time_split(bundle_dir: Path, size: int = 192, evals: int = 200) -> dict:
    """The Python side of node_time_split.mjs: median ms of one call of nst stylize's objective and of the
    bundle's objective.onnx (20 calls after a warm-up), and optim.lbfgs's own ms per evaluation over one run."""
    from nst_core import optim
    from nst_core.process.threads import single_threaded_blas
    p = _problem(size)
    out = {}
    with single_threaded_blas():
        bundle_f32 = _bundle_objective(bundle_dir, size, expected_k=p.calibration.size_factor)
        for name, fn in (("fused_objective_ms", p.objective), ("bundle_objective_ms", bundle_f32)):
            fn(p.x0)
            times = []
            for _ in range(20):
                t = time.perf_counter()
                fn(p.x0)
                times.append(time.perf_counter() - t)
            out[name] = statistics.median(times) * 1e3
    inside = [0.0]

    def timed(x):
        t = time.perf_counter()
        r = p.objective(x)
        inside[0] += time.perf_counter() - t
        return r

    t = time.perf_counter()
    r = optim.lbfgs(timed, p.x0, evals, bounds=p.bounds, history=20)
    out["optimizer_ms_per_eval"] = (time.perf_counter() - t - inside[0]) / r.n_evals * 1e3
    return out


def _timed(cmd, env) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, r.stdout.strip()


def timing(repeats: int = 3) -> dict:
    env = dict(os.environ, NST_HOME=str(features_model(CACHE).parent))
    nst = [sys.executable, str(REPO / "cli.py")]
    tmp = Path(tempfile.mkdtemp(prefix="bench_bundle_"))
    try:
        b = tmp / "bundle"
        t_bundle, _ = _timed(nst + ["bundle", str(b)], env)
        print(f"nst bundle: {t_bundle:.1f} s", flush=True)
        images = [str(IMAGES / "tubingen.jpg"), str(IMAGES / "starry_night.jpg")]
        py, nd, lines = [], [], {}
        for i in range(repeats):
            t, lines["python"] = _timed(nst + ["stylize", *images, "-o", str(tmp / "py.png"), "--device", "cpu"], env)
            py.append(t)
            t, lines["node"] = _timed(["node", str(NODE_HOST / "stylize.mjs"), "--bundle", str(b), *images,
                                       "-o", str(tmp / "node.png")], env)
            nd.append(t)
            print(f"run {i + 1}: nst stylize {py[-1]:.1f} s, node stylize.mjs {nd[-1]:.1f} s", flush=True)
        out = {"bundle_seconds": t_bundle, "nst_stylize_seconds": statistics.median(py),
               "node_seconds": statistics.median(nd), "ratio_node_over_nst": statistics.median(nd) /
               statistics.median(py), "lines": lines}
        print(f"median: nst stylize {out['nst_stylize_seconds']:.1f} s, node {out['node_seconds']:.1f} s, ratio "
              f"{out['ratio_node_over_nst']:.2f}\n  {lines['python']}\n  {lines['node']}", flush=True)
        _, split = _timed(["node", str(REPO / "bench" / "node_time_split.mjs"), str(b), *images], env)
        out["node_split"] = json.loads(split)
        out["python_split"] = _python_time_split(b)
        print(f"node: objective.onnx {out['node_split']['objective_ms']:.1f} ms per call, L-BFGS "
              f"{out['node_split']['optimizer_ms_per_eval']:.1f} ms per evaluation; python: nst stylize's objective "
              f"{out['python_split']['fused_objective_ms']:.1f} ms, objective.onnx "
              f"{out['python_split']['bundle_objective_ms']:.1f} ms, L-BFGS "
              f"{out['python_split']['optimizer_ms_per_eval']:.1f} ms per evaluation", flush=True)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", nargs="*", default=[], choices=("precision", "sensitivity", "timing"))
    ap.add_argument("--sizes", nargs="*", type=int, default=[192, 512, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    results = start(CACHE)
    if "precision" not in args.skip:
        results["precision"] = precision(args.sizes, args.repeats)
    if "sensitivity" not in args.skip:
        results["sensitivity"] = sensitivity()
    if "timing" not in args.skip:
        results["timing"] = timing()
    print(f"wrote {save_json('bundle', results)}")


if __name__ == "__main__":
    main()
