"""nst_core: the runtime of optimization-based neural style transfer on ONNX Runtime, NumPy and SciPy.

Never imports torch.
"""
from .errors import NSTError

__all__ = ["NSTError"]
