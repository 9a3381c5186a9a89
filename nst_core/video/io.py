"""Frames in and out: video files through PyAV (FFmpeg's libraries, bundled in the ``av`` wheel), folders and printf
patterns of images, and the audio of the input copied into the output. ``av`` is imported here only.

    source = open_source("clip.mp4", frames="10:50")    # or "frames/", "frames/%04d.png"; NSTError when unusable
    for index, rgb in read_frames(source): ...          # uint8 [H, W, 3], index counted from the file's first frame
    encode("out.mp4", frame_files, source.fps, audio=source)   # atomic: out.mp4 whole or untouched

A frame range ``A:B`` counts frames from 0, B excluded (Python's slices: ``10:``, ``:50``); for images, positions in
the sorted list (a pattern's numbers may start at 1 or skip). Output kinds: a video
file by its extension (``VIDEO_EXTENSIONS``: H.264 in .mp4 / .mov / .mkv, VP9 in .webm) or a folder of PNGs (any
other path: an existing folder, a path ending in a slash, or a name without an extension).
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from fractions import Fraction
from typing import Iterable, Iterator, Optional

import av
import numpy as np
from PIL import Image

from ..errors import NSTError
from ..inputs.images import one_line, open_image

__all__ = ["Source", "open_source", "read_frames", "encode", "output_kind", "parse_range", "VIDEO_EXTENSIONS",
           "IMAGE_EXTENSIONS", "DEFAULT_FPS"]

#: Output video containers and their video codec (pixel format yuv420p: the frames are padded to even sides).
VIDEO_EXTENSIONS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9"}
#: The codec options: near-transparent quality (x264 CRF 18; VP9 constant quality 24).
_CODEC_OPTIONS = {"libx264": {"crf": "18", "preset": "medium"}, "libvpx-vp9": {"crf": "24", "b": "0"}}
#: Audio codecs each container takes as they are (others are re-encoded: Opus in .webm, AAC elsewhere).
_AUDIO_COPY = {".webm": ("opus", "vorbis")}
_AUDIO_ENCODER = {".webm": "libopus"}
#: Image files a folder input takes, by extension.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
#: The frame rate of an image sequence when --fps is not given.
DEFAULT_FPS = Fraction(25)
_PRINTF = re.compile(r"%(0?)(\d*)d")


@dataclasses.dataclass(frozen=True)
class Source:
    """An input clip: ``kind`` "video" or "images"; ``path`` as given; ``files`` the image files (images); ``fps``
    a Fraction; ``total`` frames in the input; ``start`` / ``stop`` the range (frame numbers, stop excluded);
    ``size`` (width, height) of the first frame; ``audio`` whether the video has an audio stream."""

    kind: str
    path: str
    fps: Fraction
    total: int
    start: int
    stop: int
    size: tuple
    files: tuple = ()
    audio: bool = False

    @property
    def count(self) -> int:
        return self.stop - self.start


def parse_range(text: Optional[str], total: int) -> tuple[int, int]:
    """``"A:B"`` -> (start, stop) within [0, total]; None -> the whole clip. NSTError for a malformed or empty range."""
    if text is None:
        return 0, total
    match = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", str(text))
    if not match:
        raise NSTError(f"--frames {text!r}: expected A:B (frame numbers from 0, B excluded; A or B may be empty)")
    start = int(match.group(1)) if match.group(1) else 0
    stop = min(int(match.group(2)), total) if match.group(2) else total
    if stop <= start:
        raise NSTError(f"--frames {text}: no frames in that range (the input has {total} frames, 0 to {total - 1})")
    return start, stop


def _pattern_files(pattern: str) -> tuple:
    """The files a printf pattern (``dir/frame_%04d.png``) names, in numeric order."""
    folder, name = os.path.split(pattern)
    match = _PRINTF.search(name)
    width = match.group(2)
    digits = rf"\d{{{int(width)}}}" if match.group(1) and width else r"\d+"
    regex = re.compile(re.escape(name[:match.start()]) + f"({digits})" + re.escape(name[match.end():]) + "$")
    try:
        names = os.listdir(folder or ".")
    except OSError as exc:
        raise NSTError(f"{pattern}: cannot list {folder or '.'} ({one_line(exc)})") from None
    found = sorted((int(m.group(1)), n) for n in names if (m := regex.match(n)))
    return tuple(os.path.join(folder, n) for _, n in found)


def _image_files(path: str) -> tuple:
    if _PRINTF.search(os.path.basename(path)):
        return _pattern_files(path)
    return tuple(os.path.join(path, n) for n in sorted(os.listdir(path))
                 if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS and not n.startswith("."))


def _open_container(path: str):
    try:
        container = av.open(path)
    except Exception as exc:  # FFmpeg's errors: not a media file, truncated, unknown format, unreadable
        raise NSTError(f"{path}: not a readable video ({one_line(exc)})") from None
    if not container.streams.video:
        container.close()
        raise NSTError(f"{path}: has no video stream")
    return container


def _count_frames(container) -> int:
    """The video stream's frame count: from the header, else by reading the packets (no decoding)."""
    stream = container.streams.video[0]
    if stream.frames:
        return int(stream.frames)
    count = sum(1 for p in container.demux(stream) if p.size)
    container.seek(0)
    return count


def open_source(path, frames: Optional[str] = None, fps=None) -> Source:
    """The clip at ``path`` (video file, folder of images or printf pattern) with the range ``frames`` ("A:B") and
    the frame rate ``fps`` (None: the video's, or ``DEFAULT_FPS`` for images). NSTError (one line) when the input
    cannot be read, has no frames, or the range is empty."""
    path = os.fspath(path)
    rate = None if fps is None else Fraction(fps).limit_denominator(1001)
    if os.path.isdir(path) or _PRINTF.search(os.path.basename(path)):
        files = _image_files(path)
        if not files:
            raise NSTError(f"{path}: no image frames found ({', '.join(IMAGE_EXTENSIONS)})")
        start, stop = parse_range(frames, len(files))
        size = open_image(files[start]).size
        return Source("images", path, rate or DEFAULT_FPS, len(files), start, stop, size, files=files)
    if not os.path.exists(path):
        raise NSTError(f"{path}: no such file or folder")
    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        total = _count_frames(container)
        if total == 0:
            raise NSTError(f"{path}: the video has no frames")
        start, stop = parse_range(frames, total)
        size = (stream.codec_context.width, stream.codec_context.height)
        if not size[0] or not size[1]:
            raise NSTError(f"{path}: the video stream has no frame size")
        native = stream.average_rate or stream.guessed_rate or DEFAULT_FPS
        return Source("video", path, rate or Fraction(native), total, start, stop, size,
                      audio=bool(container.streams.audio))
    finally:
        container.close()


def read_frames(source: Source, start: Optional[int] = None) -> Iterator[tuple[int, np.ndarray]]:
    """(frame number, uint8 RGB [H, W, 3]) for each frame of the source's range (from ``start`` if given). NSTError
    when a frame cannot be decoded or its size differs from the first's."""
    first = source.start if start is None else start
    if source.kind == "images":
        for index in range(first, source.stop):
            image = open_image(source.files[index])
            yield index, _checked(np.asarray(image.convert("RGB")), source, source.files[index])
        return
    container = _open_container(source.path)
    try:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= source.stop:
                break
            if index >= first:
                yield index, _checked(frame.to_ndarray(format="rgb24"), source, f"frame {index}")
    except av.FFmpegError as exc:
        raise NSTError(f"{source.path}: cannot decode a frame ({one_line(exc)})") from None
    finally:
        container.close()


def _checked(rgb: np.ndarray, source: Source, what: str) -> np.ndarray:
    if (rgb.shape[1], rgb.shape[0]) != tuple(source.size):
        raise NSTError(f"{source.path}: {what} is {rgb.shape[1]}x{rgb.shape[0]}, the first frame "
                       f"{source.size[0]}x{source.size[1]}: all frames must have one size")
    return rgb


def output_kind(path) -> str:
    """"video" for a video file name (``VIDEO_EXTENSIONS``), "folder" for a folder of PNGs; NSTError for another
    file extension."""
    name = os.fspath(path)
    ext = os.path.splitext(name.rstrip(os.sep))[1].lower()
    if os.path.isdir(name) or name.endswith(os.sep) or not ext:
        return "folder"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    raise NSTError(f"{name}: unknown video extension '{ext}'; use {', '.join(VIDEO_EXTENSIONS)} or a folder for "
                   "PNG frames")


def _even(rgb: np.ndarray) -> np.ndarray:
    """The frame padded (edge pixels repeated) to even sides: yuv420p needs them."""
    h, w = rgb.shape[:2]
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if (h % 2 or w % 2) else rgb


def _copy_audio(source: Source, output, ext: str) -> None:
    """The source's audio within its frame range, added to ``output`` (an open PyAV output container): packets
    copied when the container takes the codec, else decoded and re-encoded. Times start at the range's start."""
    with av.open(source.path) as container:
        audio = container.streams.audio[0]
        begin, end = source.start / source.fps, source.stop / source.fps
        copy = audio.codec_context.name in _AUDIO_COPY.get(ext, (audio.codec_context.name,))
        if copy:
            out = output.add_stream_from_template(audio)
        else:
            out = output.add_stream(_AUDIO_ENCODER.get(ext, "aac"), rate=audio.rate or 48000)
        shift = None
        for packet in container.demux(audio):
            if packet.pts is None or packet.dts is None:
                continue
            t = float(packet.pts * audio.time_base)
            if t < begin or t >= end:
                continue
            if shift is None:
                shift = packet.pts
            if copy:
                packet.pts, packet.dts = packet.pts - shift, packet.dts - shift
                packet.stream = out
                output.mux(packet)
                continue
            for frame in packet.decode():
                frame.pts = None
                output.mux(out.encode(frame))
        if not copy:
            output.mux(out.encode(None))


def _encode_to(name: str, ext: str, frames: Iterable[np.ndarray], fps: Fraction, audio: Optional[Source]) -> int:
    count = 0
    with av.open(name, "w", format={".mkv": "matroska", ".mov": "mov"}.get(ext, ext[1:])) as output:
        codec = VIDEO_EXTENSIONS[ext]
        stream = None
        for rgb in frames:
            rgb = _even(rgb)
            if stream is None:
                stream = output.add_stream(codec, rate=fps, options=_CODEC_OPTIONS[codec])
                stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
                if audio is not None:
                    _copy_audio(audio, output, ext)
            output.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            count += 1
        if stream is not None:
            output.mux(stream.encode(None))
    return count


def encode(path, frames: Iterable[np.ndarray], fps, audio: Optional[Source] = None) -> int:
    """Write ``frames`` (uint8 RGB [h, w, 3] each, one size) as the video ``path`` at ``fps``, atomically (a
    temporary file beside it, then ``os.replace``); ``audio``: a video Source whose audio (within its range) is
    added. Returns the number of frames written; with none, nothing is written."""
    name = os.fspath(path)
    ext = os.path.splitext(name)[1].lower()
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(name)}.", suffix=ext,
                               dir=os.path.dirname(os.path.abspath(name)))
    os.close(fd)
    try:
        count = _encode_to(tmp, ext, frames, Fraction(fps), audio if audio is not None and audio.audio else None)
        if count:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the video from other users
            os.replace(tmp, name)
        return count
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_png(path) -> np.ndarray:
    """A PNG frame as uint8 RGB [h, w, 3]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
