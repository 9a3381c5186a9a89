"""The CS231n style-transfer objective and optimizers written directly in torch: the reference for tests and
benchmarks (torch is never imported by nst_core).

    net = load_net(weights_path)                                   # SqueezeNet 1.1 features, frozen, eval mode
    loss_fn = make_loss(net, content_x, style_x, content_layer=3, content_weight=6e-2, style_layers=(1, 4, 6, 7),
                        style_weights=(3e5, 1e3, 15, 3), tv_weight=2e-2)
    run = lbfgs_run(loss_fn, content_x, evaluations=200, history=100)   # torch.optim.LBFGS, no line search
    run = adam_cs231n_run(loss_fn, content_x, steps=200)                # the exercise's loop

Images are NumPy float32 [1, 3, H, W] normalised (``nst_core.inputs.images.preprocess`` is CS231n's preprocessing bit
for bit). The formulas are those of DESIGN.md, written here independently of ``nst_core.losses``.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch


def load_net(weights_path, dtype=torch.float32):
    """SqueezeNet 1.1 with the real weights, eval mode, parameters frozen, in ``dtype``."""
    from export.squeezenet import build_squeezenet

    net, _, _ = build_squeezenet(weights_path)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(dtype)


def as_dtype(net, dtype):
    """A deep copy of ``net`` in ``dtype`` (the session-shared fixture must not be modified)."""
    return copy.deepcopy(net).to(dtype)


def content_loss(weight, features, target):
    """w_c * sum((F - P)^2)."""
    return weight * torch.sum((features - target) ** 2)


def gram(features):
    """F [1, C, H, W] -> F F^T / (C H W), [C, C]."""
    _, c, h, w = features.shape
    f = features.reshape(c, h * w)
    return f @ f.t() / (c * h * w)


def style_loss(feats, layers, targets, weights):
    """sum_l w_l * sum((G_l - A_l)^2); ``feats`` indexed by layer, ``targets`` parallel to ``layers``."""
    total = feats[layers[0]].new_zeros(())
    for layer, target, w in zip(layers, targets, weights):
        total = total + w * torch.sum((gram(feats[layer]) - target) ** 2)
    return total


def tv_loss(img, weight):
    """w_t * (sum of squared vertical + horizontal neighbour differences), all channels."""
    dv = img[:, :, 1:, :] - img[:, :, :-1, :]
    dh = img[:, :, :, 1:] - img[:, :, :, :-1]
    return weight * (torch.sum(dv ** 2) + torch.sum(dh ** 2))


def make_loss(net, content_x, style_x, *, content_layer, content_weight, style_layers, style_weights, tv_weight,
              dtype=torch.float32):
    """``loss_fn(img tensor [1,3,H,W]) -> (total, {"content", "style", "tv"} tensors)`` of the CS231n objective.

    Targets are computed once from ``content_x`` (None: no content term) and ``style_x`` (None: no style term),
    NumPy float32 [1, 3, h, w], in ``dtype`` with ``net`` (which must be in ``dtype`` too)."""
    layers = list(style_layers)
    deepest = max(layers + ([content_layer] if content_x is not None else []))
    with torch.no_grad():
        content_target = None
        if content_x is not None:
            content_target = net.feature_maps(torch.tensor(content_x, dtype=dtype), upto=deepest)[content_layer]
        style_targets = []
        if style_x is not None and layers:
            feats = net.feature_maps(torch.tensor(style_x, dtype=dtype), upto=deepest)
            style_targets = [gram(feats[k]) for k in layers]

    def loss_fn(img):
        feats = net.feature_maps(img, upto=deepest)
        zero = img.new_zeros(())
        c = content_loss(content_weight, feats[content_layer], content_target) if content_target is not None \
            else zero
        s = style_loss(feats, layers, style_targets, style_weights) if style_targets else zero
        t = tv_loss(img, tv_weight)
        return c + s + t, {"content": c, "style": s, "tv": t}

    return loss_fn


def loss_and_grad(loss_fn, x: np.ndarray, dtype=torch.float64):
    """(loss float, grad ndarray float64, parts {name: float}) of ``loss_fn`` at NumPy ``x``."""
    img = torch.tensor(x, dtype=dtype, requires_grad=True)
    total, parts = loss_fn(img)
    total.backward()
    parts = {k: float(v.detach()) for k, v in parts.items()}
    return float(total.detach()), img.grad.numpy().astype(np.float64), parts


def lbfgs_run(loss_fn, x0: np.ndarray, evaluations: int = 200, history: int = 100, dtype=torch.float32) -> dict:
    """torch.optim.LBFGS(history_size=history, line_search_fn=None, lr=1, tolerances -1) for exactly
    ``evaluations`` closure calls (one ``.step``; max_iter = max_eval = evaluations).

    Returns {"best": lowest loss evaluated, "last": loss of the last evaluation, "evaluations": closure calls,
    "losses": list per evaluation, "seconds": wall time, "x_best": ndarray float64 of the best point}."""
    img = torch.tensor(x0, dtype=dtype, requires_grad=True)
    opt = torch.optim.LBFGS([img], lr=1, max_iter=evaluations, max_eval=evaluations, tolerance_grad=-1,
                            tolerance_change=-1, history_size=history, line_search_fn=None)
    losses = []
    best = {"loss": float("inf"), "x": None}

    def closure():
        opt.zero_grad()
        total, _ = loss_fn(img)
        total.backward()
        value = float(total.detach())
        losses.append(value)
        if value < best["loss"]:
            best["loss"], best["x"] = value, img.detach().numpy().astype(np.float64).copy()
        return total

    start = time.perf_counter()
    opt.step(closure)
    return {"best": best["loss"], "last": losses[-1], "evaluations": len(losses), "losses": losses,
            "seconds": time.perf_counter() - start, "x_best": best["x"]}


def adam_cs231n_run(loss_fn, x0: np.ndarray, steps: int = 200, dtype=torch.float32) -> dict:
    """The CS231n exercise's loop: Adam lr 3.0; clamp to [-1.5, 1.5] before the steps t < 190; a new Adam with
    lr 0.1 at t = 180. Returns {"best", "last" (loss of the last evaluation), "losses", "seconds"}."""
    img = torch.tensor(x0, dtype=dtype, requires_grad=True)
    opt = torch.optim.Adam([img], lr=3.0)
    losses = []
    start = time.perf_counter()
    for t in range(steps):
        if t < 190:
            img.data.clamp_(-1.5, 1.5)
        opt.zero_grad()
        total, _ = loss_fn(img)
        total.backward()
        losses.append(float(total.detach()))
        if t == 180:
            opt = torch.optim.Adam([img], lr=0.1)
        opt.step()
    return {"best": min(losses), "last": losses[-1], "losses": losses, "seconds": time.perf_counter() - start}
