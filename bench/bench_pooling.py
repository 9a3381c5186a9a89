"""Max against average pooling on SqueezeNet 1.1 (``--pooling``): does the preset weights' meaning survive, and what
does an evaluation cost with each? Everything side by side in one run.

    python bench/bench_pooling.py [--scales 1 1.4 2] [--sizes 256 512] [--repeats 7] [--runs 200]

1. Balance. For each CS231n preset at 192 px: the loss terms the preset weights multiply, with max pooling and with
   average pooling times each factor of ``--scales`` (crowsonkb/style-transfer-pytorch uses 2 on VGG): the content
   term between the content photo and the painting (resized to the photo's shape), and each style layer's term
   (style scale 100, as stylize uses with L-BFGS) between the photo's and the painting's Gram matrices. A term's
   ratio to max pooling's says how much heavier (> 1) or lighter (< 1) the preset's weight on it has become.
   Also the pooled activations' mean, max pool / average pool, at the three pools.
2. Runs. ``stylize`` with the starry_night preset at 192 px, ``--runs`` L-BFGS evaluations, from the content image,
   for max pooling and each factor: the final loss terms.
3. Time. One objective evaluation (fused: network, losses, VJP) and the network's forward + VJP alone, at each of
   ``--sizes``, max and avg (the default factor ``pooling.AVG_SCALE``), alternated, medians of ``--repeats``.

Prints the tables and writes bench/results/pooling.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import IMAGES, REPO, features_model, machine, save_json  # noqa: E402

STYLES = {"starry_night": "starry_night.jpg", "scream": "the_scream.jpg", "composition_vii": "composition_vii.jpg"}
STYLE_SCALE = 100.0


def _variants(scales):
    return [("max", None)] + [(f"avg x{s:g}", float(s)) for s in scales]


def _net(model, pooling_scale, layers):
    from nst_core.network import pooling
    from nst_core.network.model import Network, tap_name
    m = model if pooling_scale is None else pooling.with_pooling(model, "avg", pooling_scale)
    return Network(m, [tap_name(k) for k in layers], device="cpu")


def section_balance(model, scales):
    import torch
    import torch.nn.functional as fn

    from nst_core.inputs.images import open_image, preprocess
    from nst_core.losses import gram
    from nst_core.network.model import tap_name
    from nst_core.spec.presets import PRESETS
    content_pil = open_image(IMAGES / "tubingen.jpg")
    rows = []
    for name, file in STYLES.items():
        p = PRESETS[name]
        c = preprocess(content_pil, p["image_size"])
        style_pil = open_image(IMAGES / file)
        s = preprocess(style_pil, p["style_size"])
        s_resized = preprocess(style_pil.resize((c.shape[3], c.shape[2])), None)
        layers = sorted(set(p["style_layers"]) | {p["content_layer"]})
        base = None
        for label, scale in _variants(scales):
            net = _net(model, scale, layers)
            fc, fs, fr = net.features(c), net.features(s), net.features(s_resized)
            k = tap_name(p["content_layer"])
            terms = {f"content {p['content_layer']}": p["content_weight"] * float(
                np.sum((fr[k].astype(np.float64) - fc[k]) ** 2))}
            for layer, w in zip(p["style_layers"], p["style_weights"]):
                t = tap_name(layer)
                terms[f"style {layer}"] = STYLE_SCALE * w * float(
                    np.sum((gram(fc[t]).astype(np.float64) - gram(fs[t])) ** 2))
            base = base or terms
            ratios = {t: v / base[t] for t, v in terms.items()}
            rows.append(dict(preset=name, variant=label, terms=terms, ratios=ratios))
            print(f"  {name:15s} {label:9s} " + "  ".join(f"{t} {v:9.3g} ({ratios[t]:5.2f})" for t, v in terms.items()),
                  flush=True)
    # how much smaller an average pool's output is than a max pool's, on the real activations
    net = _net(model, None, [1, 4, 7])
    pool_rows = []
    for file in ["tubingen.jpg"] + list(STYLES.values()):
        f = net.features(preprocess(open_image(IMAGES / file), 192))
        ratios = []
        for k in (1, 4, 7):
            t = torch.from_numpy(f[tap_name(k)])
            ratios.append(float(fn.max_pool2d(t, 3, 2, ceil_mode=True).mean()
                                / fn.avg_pool2d(t, 3, 2, ceil_mode=True).mean()))
        pool_rows.append(dict(image=file, max_over_avg=ratios))
        print(f"  pooled mean, max / avg, at the pools after taps 1, 4, 7 of {file}: "
              + ", ".join(f"{r:.2f}" for r in ratios), flush=True)
    return rows, pool_rows


def section_runs(scales, evaluations):
    from nst_core.network import pooling
    from nst_core import api as transfer
    from nst_core.network import cache
    rows = []
    default = pooling.AVG_SCALE
    try:
        for label, scale in _variants(scales):
            cache.clear_cache()
            if scale is not None:
                pooling.AVG_SCALE = scale  # the factor stylize(pooling="avg") applies
            _, res = transfer.stylize(IMAGES / "tubingen.jpg", IMAGES / "starry_night.jpg", preset="starry_night",
                                      pooling="max" if scale is None else "avg", iterations=evaluations,
                                      device="cpu")
            rows.append(dict(variant=label, loss=res.loss, parts=dict(res.parts), evaluations=res.n_evals))
            print(f"  starry_night 192 px, {evaluations} L-BFGS evaluations, {label:9s}: loss {res.loss:9.4g} "
                  + " ".join(f"{k} {v:9.4g}" for k, v in res.parts.items()), flush=True)
    finally:
        pooling.AVG_SCALE = default
        cache.clear_cache()
    return rows


def section_time(model, sizes, repeats):
    from nst_core.network import pooling
    from nst_core.inputs.images import open_image, preprocess
    from nst_core.network.model import tap_name
    from nst_core.objective import make_objective, targets
    from nst_core.process.threads import single_threaded_blas
    from nst_core.spec.presets import PRESETS
    p = PRESETS["starry_night"]
    layers = sorted(set(p["style_layers"]) | {p["content_layer"]})
    rows = []
    for size in sizes:
        c = preprocess(open_image(IMAGES / "tubingen.jpg"), size)
        s = preprocess(open_image(IMAGES / "starry_night.jpg"), size)
        runs = {}
        for label, scale in (("max", None), ("avg", pooling.AVG_SCALE)):
            net = _net(model, scale, layers)
            with single_threaded_blas():
                ct, grams = targets(net, c, s, p["content_layer"], p["style_layers"])
            obj = make_objective(net, content_target=ct, content_layer=p["content_layer"],
                                 content_weight=p["content_weight"], style_targets=grams,
                                 style_layers=p["style_layers"], style_weights=[STYLE_SCALE * w for w in
                                                                                p["style_weights"]],
                                 tv_weight=p["tv_weight"])
            rng = np.random.default_rng(0)
            cot = {t: rng.standard_normal(f.shape).astype(np.float32) for t, f in net.forward(c).items()}
            runs[label] = (obj, net, cot)
        x = c.astype(np.float64)
        times = {(label, what): [] for label in runs for what in ("objective", "vjp")}
        with single_threaded_blas():
            for label, (obj, net, cot) in runs.items():  # warm-up
                obj(x)
                net.forward(c)
                net.backward(cot)
            for _ in range(repeats):
                for label, (obj, net, cot) in runs.items():
                    t = time.perf_counter()
                    obj(x)
                    times[(label, "objective")].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    net.forward(c)
                    net.backward(cot)
                    times[(label, "vjp")].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = dict(size=size, shape=list(c.shape[2:]), **{f"{a}_{b}_s": v for (a, b), v in med.items()})
        rows.append(row)
        for what in ("objective", "vjp"):
            print(f"  {size:4d} px {c.shape[2]}x{c.shape[3]} {what:9s}: max {med[('max', what)] * 1e3:7.1f} ms | avg "
                  f"{med[('avg', what)] * 1e3:7.1f} ms | avg / max {med[('avg', what)] / med[('max', what)]:.2f}",
                  flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.4, 2.0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--runs", type=int, default=200, help="L-BFGS evaluations per run (0: skip the runs)")
    args = ap.parse_args(argv)

    import onnx
    from nst_core.network import pooling
    model = onnx.load(features_model(REPO / "bench" / "results"))
    print(f"machine: {machine()}; default average-pool factor {pooling.AVG_SCALE:g}", flush=True)
    print("1. loss terms at the start (ratio to max pooling):", flush=True)
    balance, pools = section_balance(model, args.scales)
    runs = []
    if args.runs:
        print("2. runs:", flush=True)
        runs = section_runs(args.scales, args.runs)
    print("3. time per evaluation (medians):", flush=True)
    times = section_time(model, args.sizes, args.repeats)
    path = save_json("pooling", dict(machine=machine(), avg_scale=pooling.AVG_SCALE, scales=args.scales,
                                     balance=balance, pooled_max_over_avg=pools, runs=runs, time=times,
                                     repeats=args.repeats))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
