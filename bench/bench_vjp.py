"""One evaluation of the network and its VJP (forward + dL/dx for random cotangents on the taps): nst_core on ONNX
Runtime against torch eager autograd, same weights and taps, 2 threads each, in one run.

    python bench/bench_vjp.py [--sizes 256 512 1024] [--taps 1,3,4,6,7] [--repeats 5]

Prints a table (medians, ratio ours/torch) and writes bench/results/vjp.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (CS231N_TAPS, REPO, content_input, features_model, machine, median_time,  # noqa: E402
                          save_json, torch_net)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--taps", default=",".join(map(str, CS231N_TAPS)))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--maxpool", choices=["scatter", "masks"], default="scatter",
                    help="MaxPool backward formulation (default: scatter)")
    args = ap.parse_args(argv)
    taps = [int(t) for t in args.taps.split(",")]

    import onnx
    import torch
    from nst_core.model import Network, tap_name

    model = onnx.load(features_model(REPO / "bench" / "results"))
    net = Network(model, [tap_name(k) for k in taps], device="cpu", maxpool=args.maxpool)
    tnet = torch_net(2)
    rows = []
    for size in args.sizes:
        x = content_input(size)
        rng = np.random.default_rng(0)
        feats = net.forward(x)
        cot = {k: rng.standard_normal(f.shape).astype(np.float32) for k, f in feats.items()}
        tcot = {k: torch.from_numpy(cot[tap_name(k)]) for k in taps}

        def ours():
            net.forward(x)
            return net.backward(cot)

        def reference():
            xt = torch.tensor(x, requires_grad=True)
            fm = tnet.feature_maps(xt)
            sum((fm[k] * tcot[k]).sum() for k in taps).backward()
            return xt.grad

        t_torch = median_time(reference, args.repeats)
        t_ours = median_time(ours, args.repeats)
        t_fwd = median_time(lambda: net.forward(x), args.repeats)
        rows.append(dict(size=size, shape=list(x.shape[2:]), ours_s=t_ours, torch_s=t_torch, ratio=t_ours / t_torch,
                         ours_forward_s=t_fwd))
        print(f"{size:5d} px {x.shape[2]}x{x.shape[3]}: ours {t_ours*1e3:8.1f} ms (forward {t_fwd*1e3:6.1f}) | "
              f"torch {t_torch*1e3:8.1f} ms | ratio {t_ours/t_torch:.2f}", flush=True)
    path = save_json(f"vjp_{args.maxpool}", dict(machine=machine(), taps=taps, maxpool=args.maxpool, repeats=args.repeats, rows=rows))
    print(f"machine: {machine()}\nwrote {path}")


if __name__ == "__main__":
    main()
