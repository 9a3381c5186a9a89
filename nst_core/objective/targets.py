"""The loss targets, computed once per problem: the content image's features and the style images' Gram matrices
(several styles blended: ``sum_i w_i G_i``), and the layers a problem needs the network for.

The blended Gram matrices of the last few (network, layers, weights, style images) are kept (``GRAM_CACHE``
entries): a process that runs many jobs with the same style at the same size (a job engine's worker, ``nst
compare``) computes them once.
"""
from __future__ import annotations

import collections
import hashlib
import weakref
from typing import Optional, Sequence

import numpy as np

from ..losses import gram
from ..network.model import tap_name

__all__ = ["targets", "active_layers", "blended_grams", "GRAM_CACHE"]

#: Blended Gram targets kept per process (each is a few hundred KB at most: C x C float32 per layer).
GRAM_CACHE = 8
_GRAMS: collections.OrderedDict = collections.OrderedDict()


def active_layers(content_layer: int, content_weight: float, style_layers: Sequence[int],
                  style_weights: Sequence[float]) -> list[int]:
    """The layers whose loss has a non-zero weight, sorted: the taps the network must compute and differentiate."""
    layers = {int(layer) for layer, w in zip(style_layers, style_weights) if float(w) != 0.0}
    if float(content_weight) != 0.0:
        layers.add(int(content_layer))
    return sorted(layers)


def targets(network, content_x: Optional[np.ndarray], style_x: Optional[np.ndarray], content_layer: int,
            style_layers: Sequence[int]) -> tuple[Optional[np.ndarray], dict]:
    """Compute the loss targets once.

    ``network``: a ``model.Network`` (its ``features`` method) whose taps include ``content_layer`` (if ``content_x`` is given) and every
    layer of ``style_layers`` (if ``style_x`` is given). ``content_x`` / ``style_x``: float32 [1, 3, h, w]
    normalised images (sizes may differ), or None to skip that target.
    Returns ``(content_features, grams)``: the content image's feature map at ``content_layer``
    (float32 [1, C, h', w'], a copy) or None, and ``{layer: G}`` with G = gram(F_layer of the style image),
    float32 [C_l, C_l] (empty if ``style_x`` is None or ``style_layers`` is empty).
    """
    content_features = None
    if content_x is not None:
        feats = network.features(content_x)
        content_features = np.array(feats[tap_name(content_layer)], dtype=np.float32, copy=True)
    grams = {}
    if style_x is not None and len(style_layers):
        feats = network.features(style_x)
        for layer in style_layers:
            grams[int(layer)] = gram(feats[tap_name(layer)])
    return content_features, grams


def blended_grams(network, style_xs: Sequence[np.ndarray], weights: Sequence[float], layers) -> dict:
    """``{layer: sum_i w_i G_layer(style_xs[i])}``, float32 [C, C] each.

    ``network``: a ``model.Network`` with the taps of ``layers``; ``style_xs``: normalised float32 [1, 3, h_i, w_i]
    images, one per weight (those with weight 0 are skipped). Empty when ``layers`` is empty."""
    if len(style_xs) != len(weights):
        raise ValueError(f"{len(style_xs)} style images for {len(weights)} weights")
    layers = [int(k) for k in layers]
    key = _gram_key(network, style_xs, weights, layers)
    found = _GRAMS.get(key)
    if found is not None and found[0]() is network:
        _GRAMS.move_to_end(key)
        return dict(found[1])
    grams = _blend(network, style_xs, weights, layers)
    for g in grams.values():
        g.flags.writeable = False
    try:  # an entry lives only as long as its network: another network could get the same id()
        ref = weakref.ref(network, lambda _, key=key: _GRAMS.pop(key, None))
    except TypeError:  # an object without weak references (a test double): not cached
        return dict(grams)
    _GRAMS[key] = (ref, grams)
    while len(_GRAMS) > GRAM_CACHE:
        _GRAMS.popitem(last=False)
    return dict(grams)


def _gram_key(network, style_xs, weights, layers) -> tuple:
    """The network object, layers, weights and the images' bytes."""
    digest = hashlib.sha256()
    for x, w in zip(style_xs, weights):
        if w and x is not None:
            digest.update(repr((x.shape, str(x.dtype))).encode())
            digest.update(np.ascontiguousarray(x).tobytes())
    return id(network), tuple(layers), tuple(float(w) for w in weights), digest.hexdigest()


def _blend(network, style_xs, weights, layers) -> dict:
    total: dict = {}
    for x, w in zip(style_xs, weights):
        if not w or not layers:
            continue
        _, grams = targets(network, None, x, 0, layers)
        for k in layers:
            term = float(w) * grams[k].astype(np.float64)
            total[k] = term if k not in total else total[k] + term
    return {k: g.astype(np.float32) for k, g in total.items()}
