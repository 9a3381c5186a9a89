"""Losses: the content, Gram-style and total-variation terms with their analytic gradients (NumPy; the reference
the ONNX loss graph of ``network.lossgraph`` is tested against), and the size factor that calibrates them."""
from .terms import content_loss, gram, size_factor, style_loss, tv_loss

__all__ = ["content_loss", "gram", "style_loss", "tv_loss", "size_factor"]
