"""nst_core: the runtime of optimization-based neural style transfer on ONNX Runtime, NumPy and SciPy.

Never imports torch. The entry points (loaded on first use, so ``import nst_core.errors`` stays light)::

    from nst_core import stylize, invert, texture
    image, result = stylize("tubingen.jpg", "starry_night.jpg", preset="starry_night")
"""
from .errors import NSTError

__all__ = ["NSTError", "stylize", "invert", "texture"]


def __getattr__(name):
    if name in ("stylize", "invert", "texture"):
        from . import transfer

        return getattr(transfer, name)
    raise AttributeError(f"module 'nst_core' has no attribute {name!r}")
