"""Activation patterns: which ReLUs are on and which element wins each max-pool window (test helper).

SqueezeNet is piecewise linear in its input: on a fixed pattern (every ReLU's on/off state and every max-pool
window's winner) the network, and with it the VJP, is one linear map. Float32 cannot sign a pre-activation that is
within its rounding of zero, nor rank two window elements that close, so two correct float32 implementations can
land on different pieces for the same input (a "near-tie"); one flipped unit moves the gradient by ~1e-3 over its
receptive field (DESIGN-NOTES.md). Comparing gradients across implementations is therefore only tight on one
pattern. This module gives tests:

- ``pattern(saved)``: the pattern of a forward pass, from the tensors our split forward saves for the backward
  (ReLU outputs and max-pool inputs, by their ONNX names);
- ``torch_saved(net, x, names)``: the same tensors (and the ReLU pre-activations) from the torch reference network;
- ``forced(net, pattern)``: a context manager under which the torch network computes on that pattern (each ReLU
  multiplies by the given mask, each max pool takes the given winners), so torch autograd in float64 gives the exact
  gradient of the piece our float32 network is on: a reference that no near-tie can separate from ours;
- ``unexplained_flips(...)``: where two patterns differ at a unit that is not within float32's rounding of a tie.
"""
from __future__ import annotations

import contextlib
import re

import numpy as np
import torch
import torch.nn.functional as F

POOL_INPUTS = {"features.1": 2, "features.4": 5, "features.7": 8}  # saved tensor -> index of the MaxPool it feeds
_SQUEEZE = re.compile(r"^/features\.(\d+)/squeeze_activation/Relu_output_0$")
_TAP = re.compile(r"^features\.(\d+)$")


def windows(t: np.ndarray, out_hw) -> np.ndarray:
    """The windows of SqueezeNet's max pools (3x3, stride 2, ceil_mode) over t.

    t: [1, C, H, W] (any real dtype); out_hw: (oh, ow), the pool's output height and width (``_pool_out`` of H, W).
    Returns float64 [C, oh, ow, 9], a new array: ``[c, i, j, 3 * di + dj]`` is ``t[0, c, 2 i + di, 2 j + dj]``
    (di, dj in 0..2, row-major within the window, the order of a window-local arg-max), -inf where that lies beyond
    the bottom or right edge (ceil_mode's partial windows)."""
    oh, ow = out_hw
    c, h, w = t.shape[1:]
    p = np.full((c, 2 * oh + 1, 2 * ow + 1), -np.inf, dtype=np.float64)
    p[:, :h, :w] = t[0]
    v = np.lib.stride_tricks.sliding_window_view(p, (3, 3), axis=(1, 2))[:, ::2, ::2]
    return v.reshape(c, oh, ow, 9)


def _pool_out(n: int) -> int:
    return -(-(n - 3) // 2) + 1 - (1 if 2 * (-(-(n - 3) // 2)) >= n else 0)


def pattern(saved: dict) -> dict:
    """{name: bool mask (value > 0)} for every saved tensor but the image, plus {("argmax", name): int [C, oh, ow]}
    for each max-pool input: the window-local winner (0..8), or -1 where the window's maximum is <= 0 (its ReLU
    masks are all off, so no gradient goes through that window whichever element wins)."""
    out = {}
    for name, t in saved.items():
        if name == "image":
            continue
        t = np.asarray(t)
        out[name] = t > 0
        if name in POOL_INPUTS:
            win = windows(t.astype(np.float64), (_pool_out(t.shape[2]), _pool_out(t.shape[3])))
            arg = win.argmax(axis=-1)
            arg[win.max(axis=-1) <= 0] = -1
            out[("argmax", name)] = arg
    return out


def _relu_modules(net, name: str):
    """[(ReLU module, channel slice of the saved tensor)] that produce saved tensor `name`."""
    m = _SQUEEZE.match(name)
    if m:
        return [(net.features[int(m.group(1))].squeeze_activation, slice(None))]
    k = int(_TAP.match(name).group(1)) if _TAP.match(name) else None
    if k is None:
        raise KeyError(f"no torch module for saved tensor {name!r}")
    layer = net.features[k]
    if isinstance(layer, torch.nn.Conv2d) and isinstance(net.features[k + 1], torch.nn.ReLU):
        return [(net.features[k + 1], slice(None))]  # a tapped pre-activation (features.0): its ReLU's mask
    if isinstance(layer, torch.nn.ReLU):
        return [(layer, slice(None))]
    if hasattr(layer, "expand1x1_activation"):
        e1 = layer.expand1x1.out_channels
        return [(layer.expand1x1_activation, slice(0, e1)), (layer.expand3x3_activation, slice(e1, None))]
    raise KeyError(f"saved tensor {name!r} is not a ReLU output")


def torch_saved(net, x: np.ndarray, names) -> tuple[dict, dict]:
    """(values, pre-activations): the saved tensors `names` computed by torch `net` on x (in net's dtype, returned
    as float64 NumPy), and for each the input of the ReLU(s) that produce it."""
    names = [n for n in names if n != "image"]
    pre_parts: dict[str, list] = {n: [] for n in names}
    hooks = []
    for name in names:
        for module, _ in _relu_modules(net, name):
            hooks.append(module.register_forward_hook(
                lambda mod, args, out, name=name: pre_parts[name].append(args[0].detach())))
    dtype = next(net.parameters()).dtype
    try:
        with torch.no_grad():
            net.feature_maps(torch.tensor(x, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
    pre = {n: torch.cat(p, 1).double().numpy() for n, p in pre_parts.items()}
    return {n: np.maximum(p, 0) for n, p in pre.items()}, pre


@contextlib.contextmanager
def forced(net, pat: dict):
    """Within the block, `net` computes on pattern `pat` (from ``pattern``): every ReLU that produces a saved
    tensor returns input * mask, every max pool fed by a saved tensor returns its input at the given winners
    (windows without a winner keep torch's own max). Autograd then differentiates that piece exactly."""
    hooks = []
    dtype = next(net.parameters()).dtype
    for name, mask in pat.items():
        if isinstance(name, tuple):
            continue
        for module, sl in _relu_modules(net, name):
            m = torch.tensor(mask[:, sl], dtype=dtype)
            hooks.append(module.register_forward_hook(lambda mod, args, out, m=m: args[0] * m))
    for name, idx in POOL_INPUTS.items():
        key = ("argmax", name)
        if key not in pat:
            continue
        arg = torch.tensor(pat[key], dtype=torch.long)

        def pool(mod, args, out, arg=arg):
            x = args[0]
            c, oh, ow = arg.shape
            p = F.pad(x, (0, 2 * ow + 1 - x.shape[3], 0, 2 * oh + 1 - x.shape[2]), value=float("-inf"))
            win = p[0].unfold(1, 3, 2).unfold(2, 3, 2).reshape(c, oh, ow, 9)
            picked = win.gather(-1, arg.clamp(min=0)[..., None])[..., 0]
            return torch.where(arg >= 0, picked, out[0])[None]
        hooks.append(net.features[idx].register_forward_hook(pool))
    try:
        yield net
    finally:
        for h in hooks:
            h.remove()


def unexplained_flips(ours: dict, ref: dict, pre64: dict, pre32: dict, factor: float = 10.0) -> list[str]:
    """Where pattern `ours` differs from float64 pattern `ref` at a unit that float32 can resolve: a ReLU whose
    float64 pre-activation is beyond `factor` x the largest float32 error of that tensor (float32 torch's
    pre-activations `pre32` against float64's `pre64`, i.e. an independent implementation's own rounding), or a
    pool window whose two candidates differ by more than that in float64. Empty when every difference is a near-tie."""
    bad = []
    for name, mask in ours.items():
        if isinstance(name, tuple):
            continue
        tol = factor * np.abs(pre32[name] - pre64[name]).max()
        flips = np.argwhere(mask != ref[name])
        for unit in flips:
            if abs(pre64[name][tuple(unit)]) > tol:
                bad.append(f"ReLU {name}{tuple(unit)}: float64 pre-activation {pre64[name][tuple(unit)]:.3g}, "
                           f"float32 rounding up to {tol / factor:.2g}")
        key = ("argmax", name)
        if key in ours:
            win = windows(np.maximum(pre64[name], 0), ours[key].shape[1:])
            differ = np.argwhere((ours[key] != ref[key]) & (ours[key] >= 0) & (ref[key] >= 0))
            for c, i, j in differ:
                gap = win[c, i, j, ref[key][c, i, j]] - win[c, i, j, ours[key][c, i, j]]
                if gap > 2 * tol:
                    bad.append(f"max pool on {name} window {(c, i, j)}: float64 gap {gap:.3g}")
    return bad
