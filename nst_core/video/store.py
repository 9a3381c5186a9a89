"""The finished frames of a run, one PNG each (with the job's recipe), in a folder that makes a run resumable.

    store = FrameStore(folder, manifest)   # NSTError when the folder holds frames of another run
    store.done(index), store.save(index, rgb, text), store.files()

The manifest (``.nst-video.json`` in the folder) records what the frames depend on: the job (its Spec), the input
and its range, the temporal weight and the budgets. A rerun with the same manifest continues after the last frame
saved; one with another manifest is refused, so that frames of two different runs never mix in one video.
"""
from __future__ import annotations

import json
import os

from ..errors import NSTError
from ..outputs.files import save_image, write_bytes

__all__ = ["FrameStore", "MANIFEST", "frame_name"]

MANIFEST = ".nst-video.json"


def frame_name(index: int) -> str:
    """The file name of frame ``index`` (its number in the input)."""
    return f"{index:06d}.png"


class FrameStore:
    """The folder of a run's finished frames (created if missing; its parent must exist)."""

    def __init__(self, folder: str, manifest: dict):
        self.folder = os.fspath(folder)
        path = os.path.join(self.folder, MANIFEST)
        text = json.dumps(manifest, sort_keys=True, indent=1)
        if os.path.isdir(self.folder) and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
            if old != json.loads(text):
                what = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                raise NSTError(f"{self.folder}: holds frames of another run ({', '.join(what)} differ); remove it "
                               "or choose another output")
        else:
            if os.path.exists(self.folder) and not os.path.isdir(self.folder):
                raise NSTError(f"{self.folder}: exists and is not a folder")
            if os.path.isdir(self.folder) and any(n.endswith(".png") for n in os.listdir(self.folder)):
                raise NSTError(f"{self.folder}: holds PNG files that no video run made; choose another output")
            try:
                os.makedirs(self.folder, exist_ok=True)
            except OSError as exc:
                raise NSTError(f"{self.folder}: cannot create the frame folder ({exc.strerror})") from None
            write_bytes(path, text.encode())

    def path(self, index: int) -> str:
        return os.path.join(self.folder, frame_name(index))

    def done(self, index: int) -> bool:
        return os.path.exists(self.path(index))

    def save(self, index: int, rgb, text: dict) -> None:
        """Frame ``index`` written atomically, with the recipe ``text`` as PNG chunks."""
        save_image(self.path(index), rgb, text=text)

    def files(self, start: int, stop: int) -> list:
        """The finished frames of ``range(start, stop)`` up to the first one missing, in order."""
        out = []
        for index in range(start, stop):
            if not self.done(index):
                break
            out.append(self.path(index))
        return out
