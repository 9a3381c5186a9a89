"""``nst video``: the command line's part (the arguments are parsed in cli.py): a progress bar over frames, the
summary line, the exit status."""
from __future__ import annotations

import sys

import tqdm

from ..process import interrupts
from .io import open_source
from .run import VideoResult, stylize_video

__all__ = ["run", "EXIT_NONFINITE"]

EXIT_NONFINITE = 3


def _bar(args, total: int):
    if args.quiet or not sys.stderr.isatty():
        return None
    return tqdm.tqdm(total=total, file=sys.stderr, unit="frame", dynamic_ncols=True, leave=False)


def _summary(result: VideoResult) -> str:
    painted = [r for r in result.frames if not r.resumed]
    resumed = len(result.frames) - len(painted)
    per = sum(sum(r.seconds.values()) for r in painted[1:]) / max(1, len(painted) - 1)
    cuts = f", cuts at {', '.join(map(str, result.cuts))}" if result.cuts else ""
    again = f", {resumed} kept from an earlier run" if resumed else ""
    return (f"wrote {result.output}: {result.written} frames ({len(painted)} painted{again}{cuts}), "
            f"{result.seconds:.1f} s, {per:.2f} s per frame after the first")


def run(args, options: dict) -> int:
    """Run ``nst video`` with the parsed ``args`` and the Spec fields given (``options``); the exit status."""
    source = open_source(args.input, args.frames, args.fps)  # one-line errors before any other work
    bar = _bar(args, source.count)
    video = {"temporal_weight": args.temporal_weight, "frames": args.frames, "fps": args.fps,
             "frame_iterations": args.frame_iterations}
    on_frame = (lambda record: bar.update(1)) if bar is not None else None
    try:
        result = stylize_video(args.input, args.style, args.output, on_frame=on_frame,
                               **{k: v for k, v in video.items() if v is not None}, **options)
    finally:
        if bar is not None:
            bar.close()
    if result.status == "interrupted":
        where = f"; wrote the {result.written} frames done to {result.output}" if result.written else ""
        print(f"nst: {interrupts.stopped_by()}{where}; the same command continues the run", file=sys.stderr)
        return interrupts.exit_status()
    if result.status == "nonfinite":
        print(f"nst: error: {result.message}: the optimisation diverged (try smaller weights); {result.written} "
              f"frames written to {result.output}", file=sys.stderr)
        return EXIT_NONFINITE
    if not args.quiet:
        print(_summary(result))
    return 0
