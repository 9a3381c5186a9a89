"""Build-time only (needs torch): SqueezeNet 1.1 in torch, weight loading, ONNX export of its feature taps."""
