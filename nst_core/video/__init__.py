"""Video: a clip painted frame by frame without flicker (Ruder et al. 2016 on our objective). Needs the ``video``
extra (PyAV and OpenCV): ``pip install 'nst-onnx[video]'``.

    io        frames in and out: PyAV decode / encode, image folders and printf patterns, the audio copied
    flow      DIS optical flow both ways, warping, the consistency mask, cut detection
    temporal  the temporal loss and its gradient, added to the still's objective
    store     the finished frames of a run (PNG), which make it resumable
    clip      the per-clip loop: targets once, warped starts, budgets, shots
    run       ``stylize_video``: the Python API, from input to a playable output
    command   ``nst video``: the command line's part
"""
from .clip import TEMPORAL_WEIGHT, ClipResult, FrameRecord, VideoOptions
from .run import VideoResult, stylize_video

__all__ = ["stylize_video", "VideoResult", "VideoOptions", "ClipResult", "FrameRecord", "TEMPORAL_WEIGHT"]
