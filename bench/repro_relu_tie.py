"""The minimal reproducer of issue 13's "wrong gradient on AVX-512": one 1x1 Conv whose output float32 cannot sign.

    python bench/repro_relu_tie.py

Input: Tübingen resized to exactly 160x128 (PIL bilinear), plus 0.4 N(0,1) noise (NumPy seed 7), clipped to
[-2, 2.2] (tests/test_objective.py's input until issue 13). The exported model is cut at features.7's squeeze Conv
output (image -> 16 nodes -> a 1x1 Conv, 256 -> 32 channels; no backward at all) and run by ONNX Runtime with
ORT_ENABLE_BASIC and with ORT_ENABLE_ALL (which adds the NCHWc layout rewrite on CPUs with AVX2 / AVX-512), and the
same layers by float32 and float64 torch. It prints the pre-activation at [0, 21, 3, 1] from each, and each one's
largest error over that whole output against float64.

On the development machine (AVX-512): float64 +1.30e-5; torch float32 +1.57e-5, ORT basic +4.69e-6, ORT with the
rewrite -7.45e-8, while every float32 implementation is off by 6-8e-5 somewhere in that output. The unit is a ReLU
near-tie: its sign is below float32's resolution on this input. The rewrite's kernels round it to the other side,
its ReLU turns off, and that one unit's derivative moves the whole network's gradient by 1e-3 (relative L2) over its
receptive field. None of the four is wrong in float32: the gradient is discontinuous at the kink and the input sits
within rounding of it. See DESIGN-NOTES.md ("ReLU and max-pool near-ties").
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import IMAGES, WEIGHTS, features_model  # noqa: E402

UNIT = (0, 21, 3, 1)


def noisy_input() -> np.ndarray:
    from PIL import Image
    from nst_core.inputs.images import open_image, preprocess
    content = preprocess(open_image(IMAGES / "tubingen.jpg").resize((160, 128), Image.Resampling.BILINEAR), None)
    rng = np.random.default_rng(7)
    return (content.astype(np.float64) + 0.4 * rng.standard_normal(content.shape)).clip(-2.0, 2.2).astype(np.float32)


def cut_model(model, output: str):
    """`model` with `output` as its only output and only the nodes it needs."""
    import onnx
    from onnx import helper
    producer = {o: n for n in model.graph.node for o in n.output}
    keep, stack = set(), [output]
    while stack:
        n = producer.get(stack.pop())
        if n is not None and id(n) not in keep:
            keep.add(id(n))
            stack.extend(n.input)
    nodes = [n for n in model.graph.node if id(n) in keep]
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(nodes, "cut", list(model.graph.input), [helper.make_tensor_value_info(output, 1, None)],
                              initializer=[t for t in model.graph.initializer if t.name in used])
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def main() -> int:
    import onnx
    import onnxruntime as ort
    import torch
    from export.squeezenet import build_squeezenet

    x = noisy_input()
    out = "/features.7/squeeze/Conv_output_0"
    cut = cut_model(onnx.load(str(features_model(REPO / "bench" / "results"))), out).SerializeToString()
    net, _, _ = build_squeezenet(WEIGHTS)
    net.eval()
    with torch.no_grad():
        n64 = copy.deepcopy(net).double()
        ref = n64.features[7].squeeze(n64.features[:7](torch.from_numpy(x).double())).numpy()
        results = {"float32 torch": net.features[7].squeeze(net.features[:7](torch.from_numpy(x))).numpy()}
    for name, level in [("ORT_ENABLE_BASIC", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
                        ("ORT_ENABLE_ALL", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)]:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        results[name] = ort.InferenceSession(cut, opts, providers=["CPUExecutionProvider"]).run([out], {"image": x})[0]
    print(f"features.7 squeeze Conv at {UNIT}, float64: {ref[UNIT]:+.3e}")
    for name, y in results.items():
        print(f"  {name:17s} {y[UNIT]:+.3e}  (largest error over the output {np.abs(y - ref).max():.1e}, "
              f"ReLU {'on' if y[UNIT] > 0 else 'off'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
