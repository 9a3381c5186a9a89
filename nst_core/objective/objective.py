"""The style-transfer objective: pixels -> (loss, gradient, loss components), the optimizers' hot loop.

One evaluation at x (float64 [1, 3, H, W], ImageNet-normalised pixels), split path (``fused=False``)::

    x32 = float32(x)                                    the only down-conversion
    F   = network.forward(x32)                          ONNX Runtime, the taps in use
    L_c, dL/dF_c   = content_loss(F[content], P, content_weight)          NumPy, nst_core.losses
    L_s, dL/dF_l   = style_loss(F, A, style_weights)                      (Gram matrices, CS231n formulas)
    dL/dx (network) = network.backward(dL/dF)           ONNX Runtime VJP, float32
    L_t, dL/dx (TV) = tv_loss(x, tv_weight)             float64, on the pixels directly
    grad = dL/dx (TV) + dL/dx (network)                 the only up-conversion (float32 added into float64)

The default fused path replaces all but the first line by one ONNX Runtime call of ``network.objective`` (the same
formulas as ONNX nodes, ``nst_core.lossgraph``), TV included: its neighbour differences are taken of x32 in float32
and their squares summed in float64, and the float32 gradient (network + TV) is converted to float64 once. Against
the split path's float64 TV, TV's loss is off by 2e-10 to 3e-9 relative and the gradient's distance grew from
1.58-1.74e-7 to 1.61-1.76e-7 (relative L2), the float32 network's own level (bench/bench_bundle.py's precision rows,
192-1024 px); the time per evaluation is the same as with NumPy's TV (DESIGN-NOTES.md, issue 25).

Layers are torchvision's indices into SqueezeNet 1.1's ``features`` (0..12); the network's taps are named
``features.<layer>`` (``model.tap_name``). Target features and Gram matrices come from ``targets`` once per run.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..losses import content_loss, style_loss, tv_loss
from ..network.model import tap_name

__all__ = ["make_objective"]


def make_objective(network, *, content_target: Optional[np.ndarray], content_layer: int, content_weight: float,
                   style_targets: Mapping[int, np.ndarray], style_layers: Sequence[int],
                   style_weights: Sequence[float], tv_weight: float, fused: bool = True) -> Callable:
    """Build ``objective(x) -> (loss, grad, parts)`` for the optimizers in ``nst_core.optim``.

    ``network``: ``model.Network`` with (at least) the taps of the weighted layers (see ``active_layers``); it may
    be None when only ``tv_weight`` is non-zero, and is then never run. ``content_target``: float32
    [1, C, h', w'] features of the content image at ``content_layer`` (from ``targets``; may be None when
    ``content_weight`` is 0). ``style_targets``: {layer: Gram [C_l, C_l]} for every style layer with a non-zero
    weight. ``style_weights``: one per entry of ``style_layers``. Weights are plain multipliers of the CS231n
    loss terms (unitless).

    The objective takes x float64 [1, 3, H, W] (normalised pixels; H, W those of the content target's image) and
    returns ``(loss, grad, parts)``: loss a Python float, grad float64 [1, 3, H, W] = dloss/dx (a new array),
    parts ``{"content": L_c, "style": L_s, "tv": L_t}``. Layers with zero weight are neither computed nor
    differentiated; with no weighted layer the network is skipped entirely (only TV).

    fused: True (default) runs the network, the content, style and TV losses and their gradient in ONE ONNX Runtime
    session (``Network.objective``, ``nst_core.lossgraph``): the Gram products then use ORT's threads and the
    feature maps stay inside ORT (0.83x the split path's time per evaluation at 512 px, bench_objective.py).
    Without a weighted network term, TV alone runs in NumPy.
    False runs the split path of the module docstring, with the NumPy losses of ``nst_core.losses``.
    """
    content_weight = float(content_weight)
    tv_weight = float(tv_weight)
    if len(style_layers) != len(style_weights):
        raise ValueError(f"{len(style_layers)} style layers but {len(style_weights)} style weights")
    content_tap = tap_name(content_layer)
    use_content = content_weight != 0.0
    if use_content and content_target is None:
        raise ValueError("content_weight is non-zero but there is no content target")
    # style weights and targets keyed by tap name; a layer listed twice adds its weights
    s_weights: dict[str, float] = {}
    s_targets: dict[str, np.ndarray] = {}
    for layer, w in zip(style_layers, style_weights):
        w = float(w)
        if w == 0.0:
            continue
        name = tap_name(layer)
        s_weights[name] = s_weights.get(name, 0.0) + w
        if int(layer) not in style_targets:
            raise ValueError(f"style layer {layer} has a weight but no target Gram matrix")
        s_targets[name] = np.asarray(style_targets[int(layer)], dtype=np.float32)
    uses_network = use_content or bool(s_weights)
    if uses_network and network is None:
        raise ValueError("the objective needs a network for its content / style terms")
    net_taps = list(network.taps) if uses_network else []
    needed = ({content_tap} if use_content else set()) | set(s_weights)
    missing = needed - set(net_taps)
    if missing:
        raise ValueError(f"the network lacks the taps {sorted(missing)}")
    content_target32 = None if content_target is None else np.asarray(content_target, dtype=np.float32)

    def split_terms(x32: np.ndarray):
        """Content and style losses and their gradient dL/dx float32 through the split path: ORT forward, the
        NumPy losses of nst_core.losses, ORT backward."""
        l_content = l_style = 0.0
        feats = network.forward(x32)
        cotangents: dict[str, np.ndarray] = {}
        if use_content:
            l_content, cotangents[content_tap] = content_loss(feats[content_tap], content_target32, content_weight)
        if s_weights:
            l_style, s_grads = style_loss(feats, s_targets, s_weights)
            for name, g in s_grads.items():
                if name in cotangents:
                    cotangents[name] = cotangents[name] + g
                else:
                    cotangents[name] = g
        for name in net_taps:  # taps of the network that carry no loss: zero cotangent
            if name not in cotangents:
                cotangents[name] = np.zeros_like(feats[name])
        return l_content, l_style, network.backward(cotangents)

    if uses_network and fused and tv_weight != 0.0:
        return _fused_with_tv(network.objective(content_tap if use_content else None, content_target32,
                                                content_weight, s_targets, s_weights, tv_weight))
    network_terms = split_terms
    if uses_network and fused:
        network_terms = network.objective(content_tap if use_content else None, content_target32, content_weight,
                                           s_targets, s_weights)

    def objective(x: np.ndarray):
        l_content = l_style = 0.0
        if uses_network:
            l_content, l_style, grad_net = network_terms(x.astype(np.float32))
        if tv_weight != 0.0:
            l_tv, grad = tv_loss(x, tv_weight)
            if uses_network:
                grad += grad_net
        else:
            l_tv = 0.0
            grad = grad_net.astype(np.float64) if uses_network else np.zeros_like(x, dtype=np.float64)
        loss = l_content + l_style + l_tv
        return loss, grad, {"content": l_content, "style": l_style, "tv": l_tv}

    objective.fresh_grad = True  # grad is a new array on every call: the optimizers need not copy it (nst_core.optim)
    return objective


def _fused_with_tv(run: Callable) -> Callable:
    """The objective of ``make_objective`` from a session that computes TV too (``Network.objective`` with a
    tv_weight): one ORT call, and the float32 gradient converted to float64 once."""

    def objective(x: np.ndarray):
        l_content, l_style, l_tv, grad = run(x.astype(np.float32))
        parts = {"content": l_content, "style": l_style, "tv": l_tv}
        return l_content + l_style + l_tv, grad.astype(np.float64), parts

    objective.fresh_grad = True
    return objective
