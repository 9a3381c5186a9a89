"""CS231n's StyleTransfer parameter sets, and the style scale that makes them work with every optimizer.

A preset fixes the problem exactly as the exercise states it: ``image_size`` (the content image's smaller edge,
pixels), ``style_size`` (the style image's smaller edge when its Gram matrices are computed, pixels),
``content_layer``, ``content_weight``, ``style_layers``, ``style_weights`` and ``tv_weight`` (layers are indices
into SqueezeNet 1.1's ``features``, weights multiply the CS231n loss terms).

Style scale. CS231n tuned those weights for its Adam recipe (lr 3.0, which thrashes until the decay at step 180 and
never gets near a minimum). An optimizer that actually minimises the objective (L-BFGS) finds a loss about 4x lower
(starry_night at 192 px, 200 evaluations: 7014 vs Adam's 28698) but a picture that is barely stylised: the content
term wins. The effective style weights are therefore ``style_scale * style_weights``, with a default that depends
on the optimizer (``DEFAULT_STYLE_SCALE``): 1 for Adam, so ``--preset X --optimizer adam`` is exactly the exercise,
and 100 for L-BFGS and gradient descent.

How 100 was chosen: the three presets at 192 px, 200 L-BFGS evaluations from the content image, style scales 1, 10,
30, 100 and 300, looked at side by side (and next to the Adam pictures). At 1 the pictures are Tübingen with the
painting's texture faintly laid over it (original colours). From 10 on all three are clearly stylised; 30 to 300 is
a plateau: at 100 Starry Night has large Van Gogh swirls in the sky and the palette of the painting while every
house, the tower, the tree and the river stay recognisable; the Scream is painted in Munch's orange/blue brush
strokes (facades merge into strokes, the skyline, tower and river remain); Composition VII has Kandinsky's colour
fields and sky texture with the houses intact. 300 darkens Starry Night and changes the other two little. All of
them are cleaner and more clearly stylised than the Adam recipe's pictures, which are hazy. The middle of the
plateau was taken because the content loss is a sum over pixels while the style loss (normalised Gram matrices)
does not grow with the image: at larger ``--size`` the content term weighs more (about 4x at 384 px), so a value
at the low end of the plateau would fade at larger sizes.
"""
from __future__ import annotations

from types import MappingProxyType

__all__ = ["PRESETS", "DEFAULT_PRESET", "DEFAULT_STYLE_SCALE", "preset", "default_style_scale", "INVERSION",
           "TEXTURE"]

PRESETS = MappingProxyType({
    "composition_vii": MappingProxyType({
        "image_size": 192, "style_size": 512, "content_layer": 3, "content_weight": 5e-2,
        "style_layers": (1, 4, 6, 7), "style_weights": (20000.0, 500.0, 12.0, 1.0), "tv_weight": 5e-2,
    }),
    "scream": MappingProxyType({
        "image_size": 192, "style_size": 224, "content_layer": 3, "content_weight": 3e-2,
        "style_layers": (1, 4, 6, 7), "style_weights": (200000.0, 800.0, 12.0, 1.0), "tv_weight": 2e-2,
    }),
    "starry_night": MappingProxyType({
        "image_size": 192, "style_size": 192, "content_layer": 3, "content_weight": 6e-2,
        "style_layers": (1, 4, 6, 7), "style_weights": (300000.0, 1000.0, 15.0, 3.0), "tv_weight": 2e-2,
    }),
})

#: The parameter set used when no preset is named (the README's default job is Starry Night on Tübingen).
DEFAULT_PRESET = "starry_night"

#: CS231n's feature-inversion parameters (content only; the style weights are 0).
INVERSION = MappingProxyType({
    "image_size": 192, "content_layer": 3, "content_weight": 6e-2, "tv_weight": 2e-2,
})

#: CS231n's texture-synthesis parameters (style only): Starry Night's style layers and weights.
TEXTURE = MappingProxyType({
    "image_size": 192, "style_layers": (1, 4, 6, 7),
    "style_weights": (300000.0, 1000.0, 15.0, 3.0), "tv_weight": 2e-2,
})

#: Default style scale per optimizer (effective style weights = style_scale * style_weights).
DEFAULT_STYLE_SCALE = MappingProxyType({"lbfgs": 100.0, "lbfgsb": 100.0, "gd": 100.0, "adam": 1.0})


def preset(name: str | None) -> dict:
    """The parameters of preset ``name`` (``DEFAULT_PRESET`` when None) as a new dict.

    Raises ``KeyError`` naming the choices for an unknown name."""
    key = DEFAULT_PRESET if name is None else name
    if key not in PRESETS:
        raise KeyError(f"unknown preset {name!r} (choose {', '.join(PRESETS)})")
    return dict(PRESETS[key])


def default_style_scale(optimizer: str) -> float:
    """The style scale used with ``optimizer`` unless one is given (1.0 for an unknown name)."""
    return float(DEFAULT_STYLE_SCALE.get(optimizer, 1.0))
