"""The one-session objective's big intermediate tensors are computed where they are used, whatever order ONNX
Runtime picks among the nodes that are ready: every ReLU mask after the gradient it multiplies, every style
gradient after the backward has reached its tap (the deepest one after the content loss's sum). ORT's default
order computed them all early and held them through the backward: one evaluation at 2048 px peaked at
~3.2 GB instead of ~2.5 GB (bench/bench_memory.py). The gradient values are tested in test_lossgraph.py and
test_objective.py; this file checks the data dependencies that fix the order."""
import onnx
import pytest

from nst_core.network import lossgraph

STYLE_TAPS = ["features.1", "features.4", "features.6", "features.7"]


@pytest.fixture(scope="module", params=[False, True], ids=["float64 losses", "float32 bundle"])
def graph(request, features_model):
    model = onnx.load(features_model)
    build = lossgraph.objective_model_f32 if request.param else lossgraph.objective_model
    return build(model, "features.3", STYLE_TAPS, "image").graph


def _ancestors(graph):
    producer = {o: n for n in graph.node for o in n.output}
    memo = {}

    def of(node) -> set:
        key = id(node)
        if key not in memo:
            out = set()
            for i in node.input:
                if i in producer:
                    out.add(producer[i].name)
                    out |= of(producer[i])
            memo[key] = out
        return memo[key]
    return producer, of


def test_relu_masks_wait_for_their_gradient(graph):
    producer, ancestors = _ancestors(graph)
    masks = 0
    for node in graph.node:
        if node.op_type != "Mul" or not node.name.startswith("vjp/relu_grad"):
            continue
        g, mask = (producer[i] for i in node.input)
        assert mask.op_type == "Cast" and g.name in ancestors(mask), node.name
        masks += 1
    assert masks >= 5  # the first conv's ReLU and at least one per Fire module up to features.7


def test_style_gradients_wait_for_the_backward(graph):
    producer, ancestors = _ancestors(graph)
    grads = [n for n in graph.node if n.op_type == "Gemm" and n.name.startswith("loss/style_grad")]
    assert len(grads) == len(STYLE_TAPS)
    backward = [bool({a for a in ancestors(n) if a.startswith("vjp/")}) for n in grads]
    # the deepest tap's gradient starts the backward: it waits for the content loss instead
    starts = [n for n, b in zip(grads, backward) if not b]
    assert len(starts) == 1
    content_sum = [n.name for n in graph.node if n.op_type == "Mul" and n.name.startswith("loss/content_loss")]
    assert content_sum and content_sum[0] in ancestors(starts[0])
