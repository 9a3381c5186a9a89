"""The network and its gradient graphs: the feature model and its ONNX Runtime sessions (``model``), the
reverse-mode VJP builder (``vjp``), the loss graph (``lossgraph``), average pooling (``pooling``), the smallest
input a tap needs (``shapes``) and the per-process cache of networks (``cache``)."""
