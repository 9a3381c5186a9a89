"""One evaluation of the network and its VJP (forward + dL/dx for random cotangents on the taps): nst_core on ONNX
Runtime against torch eager autograd, same weights and taps, 2 threads each, in one run.

    python bench/bench_vjp.py [--sizes 256 512 1024] [--taps 1,3,4,6,7] [--repeats 5] [--maxpool scatter|masks]
                              [--profile N]

Prints a table (medians, ratio ours/torch) and writes bench/results/vjp_<maxpool>.json. With --profile N it also
runs the backward model N times under ONNX Runtime's profiler and prints each operator type's kernel time (median
per run of the summed *_kernel_time events; the profiler inflates them, compare shares and ratios).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
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
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile N runs of the backward per size and print the time per operator type")
    args = ap.parse_args(argv)
    taps = [int(t) for t in args.taps.split(",")]

    import onnx
    import torch
    from nst_core.network.model import Network, tap_name

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
        if args.profile:
            ops = profile_backward(model, [tap_name(k) for k in taps], args.maxpool, x, cot, args.profile)
            rows[-1]["backward_profile_ms"] = ops
            total = sum(ops.values())
            print(f"      backward kernels per run (profiled, {args.profile} runs): {total:.1f} ms")
            for op, t in sorted(ops.items(), key=lambda kv: -kv[1]):
                if t >= 0.005 * total:
                    print(f"        {op:18s} {t:7.2f} ms  {t / total:6.1%}")
    path = save_json(f"vjp_{args.maxpool}", dict(machine=machine(), taps=taps, maxpool=args.maxpool, repeats=args.repeats, rows=rows))
    print(f"machine: {machine()}\nwrote {path}")


def profile_backward(model, taps, maxpool, x, cotangents, runs) -> dict:
    """{operator type: median per run of its summed kernel time in ms} for the split backward model, run under
    ORT's profiler with the session options nst uses (no thread spinning)."""
    import onnxruntime as ort
    from nst_core.network import vjp
    from nst_core.network.model import session

    fwd, bwd = vjp.split_models(vjp.build_vjp(model, taps, maxpool=maxpool))
    names = [o.name for o in fwd.graph.output]
    saved = dict(zip(names, session(fwd, "cpu").run(names, {"image": x}))) | {"image": x}
    feeds = {i.name: cotangents[i.name[len("grad_"):]] if i.name.startswith("grad_") else saved[i.name]
             for i in bwd.graph.input}
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "backward")
        sess = ort.InferenceSession(bwd.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):  # the first run warms up and is left out
            sess.run(["grad_image"], feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[1:]
    per_run = [dict() for _ in spans]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            for run, (start, end) in zip(per_run, spans):
                if start <= e["ts"] <= end:
                    op = e["args"]["op_name"]
                    run[op] = run.get(op, 0.0) + e["dur"] / 1e3
                    break
    return {op: statistics.median(r.get(op, 0.0) for r in per_run) for op in set().union(*per_run)}


if __name__ == "__main__":
    main()
