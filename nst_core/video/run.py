"""``stylize_video``: the Python API of a clip, from input to a playable output.

    result = stylize_video("clip.mp4", "starry_night.jpg", "out.mp4", size=256, temporal_weight=5)

The still's options (``nst_core.api``'s, the fields of ``Spec``) plus ``VideoOptions``' fields. The clip is painted
at one scale (``scales`` is 1). Outputs: a video file (H.264 .mp4 / .mov / .mkv, VP9 .webm; the input's audio
within the range copied when the frame rate is the input's) or a folder of PNG frames. A video output's frames are
made in ``OUTPUT.frames/`` and encoded at the end; that folder is removed once the video is complete, and kept
after a stop, so that the same call continues where it stopped. A stop (Ctrl-C, SIGTERM) writes a playable video of
the frames done so far.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time

from ..api import job_of
from ..errors import NSTError
from ..inputs.images import open_image
from ..network import cache
from ..network import model as _model
from ..objective import active_layers
from ..outputs import recipe
from ..outputs.files import same_file
from ..schedule import scale_jobs
from ..spec.blend import as_list
from ..spec.spec import Spec, to_dict
from .clip import ClipResult, VideoOptions, frame_budget, paint_clip
from .io import Source, encode, open_source, output_kind, read_png
from .store import FrameStore

__all__ = ["stylize_video", "VideoResult", "video_job", "frame_folder"]
_VIDEO_FIELDS = tuple(f.name for f in dataclasses.fields(VideoOptions))


@dataclasses.dataclass
class VideoResult(ClipResult):
    """A ``ClipResult`` and what was written: ``output``, ``written`` frames in it, ``source`` (the input's
    ``io.Source``), ``seconds`` (wall clock of the call; per frame in ``frames[i].seconds``, encoding in
    ``encode_seconds``)."""

    output: str = ""
    written: int = 0
    source: Source = None
    seconds: float = 0.0
    encode_seconds: float = 0.0


def frame_folder(output: str) -> str:
    """Where the frames of ``output`` are made: the folder itself, or ``OUTPUT.frames`` beside a video file."""
    return output if output_kind(output) == "folder" else os.fspath(output) + ".frames"


def video_job(style, **options) -> tuple[Spec, VideoOptions, list]:
    """The resolved single-scale Spec, the VideoOptions and the style images as given (paths or PIL images), from
    ``stylize_video``'s keyword arguments; NSTError for a bad option, before any file is read."""
    video = VideoOptions(**{k: options.pop(k) for k in _VIDEO_FIELDS if k in options}).check()
    job, images = job_of("stylize", None, style, **{**options, "scales": 1})
    job = scale_jobs(job)[0]
    return job, video, images.get("styles") or list(job.styles)


def _check_frame_size(job: Spec, source: Source) -> None:
    """NSTError when the input's frames are smaller than the network's smallest input for the job's layers."""
    content_layer, content_weight = job.content_terms
    layers = active_layers(content_layer, content_weight, job.style_layers or (), job.effective_style_weights)
    minimum = cache.min_size(_model.find_model(job.model), layers) if layers else 1
    if min(source.size) < minimum:
        raise NSTError(f"{source.path}: frames of {source.size[0]}x{source.size[1]} px are too small for layer "
                       f"{max(layers)}: the network needs at least {minimum} px")


def _manifest(job: Spec, source: Source, video: VideoOptions) -> dict:
    return {"spec": to_dict(job), "input": os.path.abspath(source.path), "range": [source.start, source.stop],
            "temporal_weight": video.temporal_weight, "frame_iterations": frame_budget(job, video),
            "cut_fraction": video.cut_fraction}


def _check_output(output: str, source: Source, styles) -> None:
    output_kind(output)
    for path in [source.path, *source.files, *[s for s in styles if isinstance(s, str)]]:
        if same_file(output, path):
            raise NSTError(f"{output}: the output would overwrite the input {path}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(output.rstrip(os.sep)))):
        raise NSTError(f"{output}: its folder does not exist")


def stylize_video(input, style, output, callback=None, on_frame=None, **options) -> VideoResult:
    """Paint the clip ``input`` (video file, image folder or printf pattern) in the style of ``style`` (a path or
    PIL image, or a list of them) into ``output``; see the module docstring. ``on_frame(FrameRecord)`` after each
    frame, ``callback(record, x)`` after each evaluation. Returns a ``VideoResult`` whose ``status`` is "done",
    "interrupted" (a playable video of the frames done was written) or "nonfinite"."""
    start = time.perf_counter()
    output = os.fspath(output)
    job, video, styles = video_job(style, **options)
    _model.find_model(job.model)
    _model.providers(job.device)
    source = open_source(input, video.frames, video.fps)
    _check_output(output, source, styles)
    _check_frame_size(job, source)
    style_imgs = [s if not isinstance(s, (str, os.PathLike)) else open_image(s) for s in as_list(styles)]
    store = FrameStore(frame_folder(output), _manifest(job, source, video))
    note = f"frame of {os.path.basename(source.path)}, temporal weight {video.temporal_weight:g}"
    text = recipe.recipe(job, recipe.weights_sha256(job), note=note)
    clip = paint_clip(job, source, style_imgs, store, text, video, on_frame, callback)
    result = VideoResult(**dataclasses.asdict(clip) | {"frames": clip.frames}, output=output, source=source)
    t = time.perf_counter()
    files = store.files(source.start, source.stop)
    result.written = len(files)
    if output_kind(output) == "video" and files:
        done = dataclasses.replace(source, stop=source.start + len(files))
        same_rate = video.fps is None or source.kind != "video"
        result.written = encode(output, (read_png(p) for p in files), source.fps, audio=done if same_rate else None)
        if clip.status == "done":
            shutil.rmtree(store.folder)
    result.encode_seconds = time.perf_counter() - t
    result.seconds = time.perf_counter() - start
    return result
