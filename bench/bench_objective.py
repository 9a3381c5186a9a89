"""nst_core against the same algorithm in PyTorch eager mode (torch autograd, 2 threads), side by side in one run.

    python bench/bench_objective.py [--sizes 256 512 1024 2048] [--quality-sizes 192 512] [--skip ...]

Sections (all on CS231n's starry_night objective: Tübingen, Starry Night at the same size, content layer 3,
style layers 1,4,6,7 with weights 3e5,1e3,15,3, TV 2e-2; the same weights file for both):
  eval     time per objective evaluation (forward + losses + gradient): medians and ratio ours/torch, for our
           default one-session objective and for the split path (forward / NumPy losses / backward); and the
           floor: the evaluation's FLOPs (from ORT's profile of one run) over the machine's fp32 GEMM rate
           (ORT's MatMul, measured at the start of the run)
  profile  ORT's profiler on one evaluation at --profile-size (512): kernel time by op type, share, FLOPs and
           floor per op type, and the max-pool backward's kernels (vjp.py's arg-max pools and scatter-adds)
  quality  wall time for our L-BFGS (lbfgs, and SciPy's L-BFGS-B as lbfgsb) to reach the loss torch.optim.LBFGS
           (history 100, no line search, no early stop) reaches in 200 evaluations from the content image; ratio
           of wall times; each of ours may spend up to 250 evaluations
  memory   peak resident memory (ru_maxrss of a fresh process doing 3 evaluations) at 1024 and 2048 px
  cold     process start to the first finished evaluation at 512 px (fresh process, model already exported)
  picture  the default picture at --picture-size (1024): `nst stylize` with every default, process start to PNG
  size     installed size of the runtime's dependencies against torch's CPU build (this environment)
Prints a table per section and writes bench/results/objective.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from bench.common import IMAGES, WEIGHTS, load_avg, median_time, save_json  # noqa: E402

STARRY = dict(content_layer=3, content_weight=6e-2, style_layers=(1, 4, 6, 7), style_weights=(3e5, 1e3, 15, 3),
              tv_weight=2e-2)
CACHE = REPO / "bench" / "results"


def inputs(size: int, style_size: int | None = None):
    from nst_core.inputs.images import open_image, preprocess
    return (preprocess(open_image(IMAGES / "tubingen.jpg"), size),
            preprocess(open_image(IMAGES / "starry_night.jpg"), style_size or size))


def ours_objective(size: int, style_size: int | None = None, fused: bool = True, optimization: str = "all"):
    """(objective, x0 float64) of nst_core for the starry_night problem at `size`; the objective runs with one
    BLAS thread, as nst_core.api runs it (OpenBLAS's own threads fight ONNX Runtime's for the cores).
    fused: the default one-session objective (True) or the split forward / NumPy losses / backward path;
    optimization: the sessions' graph optimisation (nst_core.network.model.OPTIMIZATIONS)."""
    import onnx
    from nst_core.network.model import Network, tap_name
    from nst_core.objective import make_objective, targets
    from bench.common import features_model
    model = onnx.load(features_model(CACHE))
    layers = sorted({STARRY["content_layer"], *STARRY["style_layers"]})
    net = Network(model, [tap_name(k) for k in layers], device="cpu", optimization=optimization)
    cx, sx = inputs(size, style_size)
    ct, grams = targets(net, cx, sx, STARRY["content_layer"], STARRY["style_layers"])
    inner = make_objective(net, content_target=ct, style_targets=grams, fused=fused, **STARRY)
    # Found once: single_threaded_blas() (threadpool_limits) rescans the process's loaded libraries on every entry,
    # 1.5-3 ms, which a per-evaluation wrapper would charge to every evaluation. nst_core enters it once per run.
    from threadpoolctl import ThreadpoolController
    blas = ThreadpoolController()

    def obj(x):
        with blas.limit(limits=1, user_api="blas"):
            return inner(x)
    obj.fresh_grad = getattr(inner, "fresh_grad", False)  # as the optimizers see nst_core's objective
    return obj, cx.astype(np.float64)


def objective_session_inputs(size: int, maxpool: str = "scatter"):
    """(ONNX model, feeds) of the one-session objective exactly as ``make_objective`` runs it at `size`
    (``Network.objective``'s model with TV: float32 image in, the losses and the float32 gradient out)."""
    import onnx
    from nst_core.network import lossgraph
    from nst_core.network.model import Network, tap_name
    from nst_core.objective import targets
    from bench.common import features_model
    model = onnx.load(features_model(CACHE))
    layers = sorted({STARRY["content_layer"], *STARRY["style_layers"]})
    net = Network(model, [tap_name(k) for k in layers], device="cpu")
    cx, sx = inputs(size)
    ct, grams = targets(net, cx, sx, STARRY["content_layer"], STARRY["style_layers"])
    style = [tap_name(k) for k in STARRY["style_layers"]]
    onnx_model = lossgraph.objective_model(model, tap_name(STARRY["content_layer"]), style, "image", maxpool=maxpool,
                                           tv=True)
    feeds = {"image": cx, lossgraph.CONTENT_TARGET: ct, lossgraph.CONTENT_WEIGHT: np.array(STARRY["content_weight"]),
             lossgraph.TV_WEIGHT: np.array(STARRY["tv_weight"])}
    for k, w in zip(STARRY["style_layers"], STARRY["style_weights"]):
        feeds[lossgraph.gram_input(tap_name(k))] = grams[k]
        feeds[lossgraph.style_weight_input(tap_name(k))] = np.array(float(w))
    return onnx_model, feeds


def gemm_rate(n: int = 1536, repeats: int = 7) -> float:
    """The machine's measured fp32 GEMM rate in FLOP/s: ORT's MatMul (MLAS, the kernels our Conv and Gemm use) of
    two n x n matrices in a session with nst's settings; the best of `repeats` (a rate the machine can reach)."""
    from onnx import TensorProto, helper
    from nst_core.network.model import session
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info(v, TensorProto.FLOAT, [n, n]) for v in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    sess = session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "cpu")
    rng = np.random.default_rng(0)
    feeds = {v: rng.standard_normal((n, n)).astype(np.float32) for v in "ab"}
    sess.run(None, feeds)
    best = min(_timed(lambda: sess.run(None, feeds)) for _ in range(repeats))
    return 2.0 * n ** 3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _flops(op: str, ins: list, outs: list, weight=None) -> float:
    """FLOPs of one kernel from the shapes ORT's profiler records: Conv (also fused and NCHWc) 2 N Cout Ho Wo
    Cin/g kh kw; ConvTranspose 2 N Cin H W Cout/g kh kw (``weight``: its weight's shape); Gemm / MatMul 2 M N K; arithmetic and comparisons one per
    output element; data movement (Reshape, Slice, Concat, Reorder*, Pad, Cast, ...) none."""
    prod = lambda v: float(np.prod(v)) if v else 1.0  # noqa: E731
    if op in ("Conv", "FusedConv") and len(ins) >= 2:
        w, o = ins[1], outs[0]
        return 2.0 * prod(o) * prod(w[1:])
    if op == "ConvTranspose" and weight is not None:  # ORT lists no weight input for a pre-packed one
        return 2.0 * prod(ins[0]) * prod(weight[1:])
    if op in ("Gemm", "MatMul", "FusedMatMul") and len(ins) >= 2:
        m = outs[0][0]
        a = ins[0]
        k = a[1] if a[0] == m else a[0]
        return 2.0 * prod(outs[0]) * k
    if op in ("Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Greater", "Equal", "Relu", "Neg", "MaxPool",
              "ReduceSumSquare", "ReduceSum", "AveragePool"):
        return prod(ins[0]) if op.startswith("Reduce") or op.endswith("Pool") else prod(outs[0])
    return 0.0


#: Nodes of the max-pool backward (vjp.py's names): the arg-max pools and the scatter-adds.
POOL_BACKWARD = ("vjp/argmax_", "vjp/scatter_add_")


def profile(onnx_model, feeds, runs: int = 5) -> dict:
    """One evaluation under ORT's profiler, nst's session settings: {"ops": {op type: {"ms": median kernel time per
    run, "nodes": kernels per run, "gflop": FLOPs per run / 1e9}}, "kernel_ms": their sum, "pool_backward_ms":
    the max-pool backward's kernels (``POOL_BACKWARD``)}. The profiler inflates small kernels; compare shares."""
    import statistics
    import tempfile
    import onnxruntime as ort
    from nst_core.network.model import session
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "objective")
        sess = session(onnx_model, "cpu", options=opts)
        for _ in range(runs + 1):  # the first run warms up and is left out
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[1:]
    per_run = [dict() for _ in spans]
    inits = {t.name: list(t.dims) for t in onnx_model.graph.initializer}
    weights = {n.name.rsplit("/", 1)[0]: inits.get(n.input[1]) for n in onnx_model.graph.node
               if n.op_type == "ConvTranspose"}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        for run, (start, end) in zip(per_run, spans):
            if start <= e["ts"] <= end:
                a = e["args"]
                shape = lambda d: list(d.values())[0]  # noqa: E731
                ins = [shape(d) for d in a.get("input_type_shape", [])]
                outs = [shape(d) for d in a.get("output_type_shape", [])]
                row = run.setdefault(a["op_name"], dict(ms=0.0, nodes=0, gflop=0.0))
                row["ms"] += e["dur"] / 1e3
                row["nodes"] += 1
                node = e["name"][:-len("_kernel_time")].rsplit("/", 1)[0]
                row["gflop"] += _flops(a["op_name"], ins, outs, weights.get(node)) / 1e9
                if e["name"].startswith(POOL_BACKWARD):
                    run["pool_backward"] = run.get("pool_backward", 0.0) + e["dur"] / 1e3
                break
    pool = statistics.median(r.pop("pool_backward", 0.0) for r in per_run)
    names = set().union(*per_run)
    ops = {op: {k: statistics.median(r.get(op, {}).get(k, 0) for r in per_run) for k in ("ms", "nodes", "gflop")}
           for op in names}
    return dict(ops=ops, kernel_ms=sum(v["ms"] for v in ops.values()), pool_backward_ms=pool)


def section_profile(size: int = 512, runs: int = 5, rate: float | None = None) -> dict:
    """ORT's profile of one evaluation at `size` by op type, with each type's floor (its FLOPs over the GEMM rate)."""
    rate = rate or gemm_rate()
    onnx_model, feeds = objective_session_inputs(size)
    prof = profile(onnx_model, feeds, runs)
    total = prof["kernel_ms"]
    print(f"  profile {size} px: kernel time {total:.1f} ms per evaluation; max-pool backward "
          f"{prof['pool_backward_ms']:.1f} ms ({prof['pool_backward_ms'] / total:.0%}); fp32 GEMM rate "
          f"{rate / 1e9:.0f} GFLOP/s", flush=True)
    print(f"    {'op':18s} {'nodes':>5s} {'ms':>7s} {'share':>6s} {'GFLOP':>7s} {'floor ms':>8s}")
    for op, r in sorted(prof["ops"].items(), key=lambda kv: -kv[1]["ms"]):
        r["floor_ms"] = r["gflop"] * 1e9 / rate * 1e3
        if r["ms"] >= 0.005 * total:
            print(f"    {op:18s} {r['nodes']:5.0f} {r['ms']:7.2f} {r['ms'] / total:6.1%} {r['gflop']:7.2f} "
                  f"{r['floor_ms']:8.2f}")
    prof.update(size=size, gemm_gflops=rate / 1e9, floor_ms=sum(r["floor_ms"] for r in prof["ops"].values()))
    print(f"    floor (all FLOPs at the GEMM rate): {prof['floor_ms']:.1f} ms", flush=True)
    return prof


def torch_objective(size: int, style_size: int | None = None):
    import torch
    import torch_reference as ref
    torch.set_num_threads(2)
    net = ref.load_net(WEIGHTS)
    cx, sx = inputs(size, style_size)
    return ref, ref.make_loss(net, cx, sx, **STARRY), cx


def section_eval(sizes, repeats, rate: float):
    """Per size: our evaluation and torch's (medians, ratio) and the floor: the evaluation's FLOPs (ORT's profile of
    one run, ``profile``) at the measured GEMM ``rate``."""
    import torch
    rows = []
    for size in sizes:
        flops = sum(r["gflop"] for r in profile(*objective_session_inputs(size), runs=1)["ops"].values()) * 1e9
        reps = repeats if size <= 1024 else max(2, repeats // 2)
        obj, x0 = ours_objective(size)
        split, _ = ours_objective(size, fused=False)
        _, loss_fn, cx = torch_objective(size)

        def reference():
            img = torch.tensor(cx, requires_grad=True)
            total, _ = loss_fn(img)
            total.backward()

        t_ours = median_time(lambda: obj(x0), reps)
        t_split = median_time(lambda: split(x0), reps)
        t_torch = median_time(reference, reps)
        floor = flops / rate
        rows.append(dict(size=size, shape=list(x0.shape[2:]), ours_s=t_ours, ours_split_s=t_split, torch_s=t_torch,
                         ratio=t_ours / t_torch, split_ratio=t_split / t_torch, gflop=flops / 1e9, floor_s=floor,
                         floor_ratio=floor / t_torch))
        print(f"  eval {size:5d} px {x0.shape[2]}x{x0.shape[3]}: ours {t_ours*1e3:8.1f} ms (split path "
              f"{t_split*1e3:.1f}) | torch {t_torch*1e3:8.1f} ms | ratio {t_ours/t_torch:.2f} (split "
              f"{t_split/t_torch:.2f}) | floor {floor*1e3:.1f} ms ({flops/1e9:.1f} GFLOP; {floor/t_torch:.2f}x torch, "
              f"ours {t_ours/floor:.1f}x floor)", flush=True)
        obj = split = loss_fn = None  # free this size before the next
    return rows


def section_quality(sizes, evaluations=200, engines=("lbfgs", "lbfgsb")):
    """For each size: torch.optim.LBFGS's loss after ``evaluations`` evaluations, then each of our L-BFGS engines
    (``optim.OPTIMIZERS[name]`` as ``stylize`` runs it: pixel bounds, LBFGS_HISTORY pairs) from the same start."""
    from nst_core import optim
    from nst_core.inputs.images import pixel_bounds
    from nst_core.process.threads import single_threaded_blas
    from nst_core.spec import LBFGS_HISTORY
    rows = []
    for size in sizes:
        ref, loss_fn, cx = torch_objective(size)
        run = ref.lbfgs_run(loss_fn, cx, evaluations=evaluations, history=100)
        target = run["best"]
        row = dict(size=size, torch_loss=target, torch_seconds=run["seconds"])
        obj, x0 = ours_objective(size)
        lo, hi = pixel_bounds(x0.shape)
        print(f"  quality {size} px: torch LBFGS {evaluations} evals -> {target:.6g} in {run['seconds']:.1f} s",
              flush=True)
        for name in engines:
            reached = {}

            def callback(record, x):
                if "seconds" not in reached and record.loss <= target:
                    reached.update(seconds=time.perf_counter() - start, evaluation=record.evaluation)

            start = time.perf_counter()
            with single_threaded_blas():  # as nst_core.api runs the optimisation
                res = optim.OPTIMIZERS[name](obj, x0, evaluations + 50, history=LBFGS_HISTORY, callback=callback,
                                             bounds=(lo.reshape(x0.shape), hi.reshape(x0.shape)))
            total = time.perf_counter() - start
            ratio = reached["seconds"] / run["seconds"] if reached else None
            row[name] = dict(final_loss=res.loss, evaluations=res.n_evals, seconds_total=total,
                             seconds_to_torch_loss=reached.get("seconds"),
                             evals_to_torch_loss=reached.get("evaluation"), ratio=ratio)
            print(f"    {name:7s} reaches it at eval {reached.get('evaluation')} after "
                  f"{reached.get('seconds', float('nan')):.1f} s (best {res.loss:.6g} after {res.n_evals} evals, "
                  f"{total:.1f} s) | ratio {ratio if ratio is None else round(ratio, 2)}", flush=True)
        rows.append(row)
    return rows


def _child(which: str, size: int) -> None:
    """Memory / cold-start child: 3 evaluations (1 for cold), then JSON on stdout."""
    t0 = float(os.environ.get("NST_BENCH_T0", time.time()))
    if which == "ours":
        obj, x0 = ours_objective(size)
        run = lambda: obj(x0)  # noqa: E731
    else:
        import torch
        _, loss_fn, cx = torch_objective(size)

        def run():
            img = torch.tensor(cx, requires_grad=True)
            total, _ = loss_fn(img)
            total.backward()
    n = int(os.environ.get("NST_BENCH_EVALS", "3"))
    run()
    first = time.time() - t0
    for _ in range(n - 1):
        run()
    print(json.dumps(dict(first_eval_s=first, maxrss_mb=_peak_rss_mb())))


def _peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (reset by exec, unlike ru_maxrss, which a child started from a
    big parent inherits)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _spawn(which: str, size: int, evals: int) -> dict:
    env = dict(os.environ, NST_BENCH_T0=repr(time.time()), NST_BENCH_EVALS=str(evals))
    out = subprocess.run([sys.executable, __file__, "--child", which, str(size)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def section_memory(sizes):
    rows = []
    for size in sizes:
        ours, ref = _spawn("ours", size, 3), _spawn("torch", size, 3)
        rows.append(dict(size=size, ours_mb=ours["maxrss_mb"], torch_mb=ref["maxrss_mb"],
                         ratio=ours["maxrss_mb"] / ref["maxrss_mb"]))
        print(f"  memory {size} px: ours {ours['maxrss_mb']:.0f} MB | torch {ref['maxrss_mb']:.0f} MB | ratio "
              f"{ours['maxrss_mb']/ref['maxrss_mb']:.2f}", flush=True)
    return rows


def section_cold(size=512, repeats=3):
    ours = sorted(_spawn("ours", size, 1)["first_eval_s"] for _ in range(repeats))[repeats // 2]
    ref = sorted(_spawn("torch", size, 1)["first_eval_s"] for _ in range(repeats))[repeats // 2]
    print(f"  cold start {size} px (median of {repeats}): ours {ours:.2f} s | torch {ref:.2f} s", flush=True)
    return dict(size=size, ours_s=ours, torch_s=ref, ratio=ours / ref)


def section_picture(size: int = 1024, repeats: int = 1) -> dict:
    """Wall time of the default picture: a fresh process (process start to the PNG written) running
    ``nst stylize`` with every default (preset starry_night, the default coarse-to-fine schedule) at `size`;
    the median of `repeats`. nst only: torch has no such schedule to compare with."""
    import statistics
    import tempfile
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "picture.png"
            t = time.perf_counter()
            subprocess.run([sys.executable, str(REPO / "cli.py"), "stylize", str(IMAGES / "tubingen.jpg"),
                            str(IMAGES / "starry_night.jpg"), "--size", str(size), "--device", "cpu",
                            "--model", str(CACHE / "features.onnx"), "-q", "-o", str(out)],
                           check=True, capture_output=True)
            times.append(time.perf_counter() - t)
    wall = statistics.median(times)
    print(f"  default picture {size} px (median of {repeats}): {wall:.1f} s", flush=True)
    return dict(size=size, seconds=wall, runs=times)


def _dist_size(name: str) -> int:
    from importlib import metadata
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return 0
    total = 0
    for f in dist.files or []:
        p = Path(dist.locate_file(f))
        if p.is_file():
            total += p.stat().st_size
    return total


def _closure(names) -> set:
    """The named distributions and everything they require (installed ones), lower-case."""
    import re
    from importlib import metadata
    seen, stack = set(), [n.lower() for n in names]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        try:
            reqs = metadata.distribution(n).requires or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(n)
        for r in reqs:
            if "extra ==" in r:
                continue
            stack.append(re.split(r"[ ;<>=!~\[(]", r.strip(), maxsplit=1)[0].lower())
    return seen


def section_size():
    runtime = _closure(["numpy", "scipy", "pillow", "onnx", "tqdm", "onnxruntime"])
    torch_deps = _closure(["torch"])
    ours = sum(_dist_size(n) for n in runtime)
    ref = sum(_dist_size(n) for n in torch_deps)
    biggest = sorted(((_dist_size(n) / 1e6, n) for n in runtime), reverse=True)[:4]
    print(f"  installed size: runtime {ours/1e6:.0f} MB ({', '.join(f'{n} {s:.0f}' for s, n in biggest)}) | "
          f"torch CPU build with its deps {ref/1e6:.0f} MB", flush=True)
    return dict(runtime_mb=ours / 1e6, runtime_packages=sorted(runtime), torch_mb=ref / 1e6,
                torch_packages=sorted(torch_deps))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--quality-sizes", type=int, nargs="+", default=[192, 512])
    ap.add_argument("--memory-sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile-size", type=int, default=512)
    ap.add_argument("--picture-size", type=int, default=1024)
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["eval", "profile", "quality", "memory", "cold", "picture", "size"])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if argv is None:  # run as `nst` runs: malloc with huge pages where possible (nst_core/memory.py)
        from nst_core.process import memory
        memory.reexec_with_huge_pages()
    if args.child:
        return _child(args.child[0], int(args.child[1]))
    from bench.common import start
    results = start(CACHE)
    rate = results["gemm_gflops"] = gemm_rate() / 1e9
    print(f"fp32 GEMM rate (ORT MatMul): {rate:.0f} GFLOP/s; load average {load_avg()}", flush=True)
    if "eval" not in args.skip:
        results["eval"] = section_eval(args.sizes, args.repeats, rate * 1e9)
    if "profile" not in args.skip:
        results["profile"] = section_profile(args.profile_size, rate=rate * 1e9)
    if "quality" not in args.skip:
        results["quality"] = section_quality(args.quality_sizes)
    if "memory" not in args.skip:
        results["memory"] = section_memory(args.memory_sizes)
    if "cold" not in args.skip:
        results["cold"] = section_cold()
    if "picture" not in args.skip:
        results["picture"] = section_picture(args.picture_size)
    results["load_average_end"] = load_avg()
    if "size" not in args.skip:
        results["size"] = section_size()
    print(f"wrote {save_json('objective', results)}")


if __name__ == "__main__":
    main()
