"""The ``nst`` command line: a thin layer over ``nst_core.api`` (and ``export`` for ``nst export``).

    nst stylize [CONTENT STYLE [STYLE ...]] [-o OUT] [--preset NAME] [problem and optimizer options]
    nst stylize --spec PICTURE.png|JOB.json [options]   the job a picture records (invert / texture likewise)
    nst invert  [CONTENT] [-o OUT] ...          feature inversion (content only, from noise)
    nst texture [STYLE] [-o OUT] ...            texture synthesis (style only, from noise)
    nst video   INPUT STYLE [STYLE ...] -o OUT  a clip painted frame by frame (needs: pip install 'nst-onnx[video]')
    nst export  [--weights FILE] [--out DIR]    write features.onnx (needs torch: pip install 'nst-onnx[export]')
    nst export-vjp --taps 1,3,4,6,7 [--height H --width W] [--out vjp.onnx]   self-contained VJP model
    nst info    [PICTURE] [--model PATH]        the model's path, taps and metadata; or a picture's recipe
    nst bundle  DIR [--preset NAME ...] | --check DIR   float32 models + manifest for other hosts
    nst serve-web [--bundle DIR] [--port P]     the browser host (hosts/web) and a bundle on http://127.0.0.1:P/
    nst batch MANIFEST -o OUTDIR [--workers N | --scheduler ADDR] [--store URL]   many jobs on Dask workers
    nst serve [--host ADDR] [--port P] [--data DIR] [--token-file F] ...   the HTTP service (needs the serve extra)

Exit status: 0 success; 2 a problem with the input (bad option, image, model or output path; one line on stderr
``nst: error: ...``, never a traceback); 3 the optimisation diverged (NaN or infinite loss / gradient: the best
finite image is saved); 128 + the signal's number when stopped by a signal: 130 Ctrl-C (SIGINT), 143 SIGTERM, 129
SIGHUP (during the optimisation the best image so far is saved first, at the output path; of several signals the
first one's); 141 ``nst info`` cut off by a closed pipe (a closed or full stdout otherwise never changes the status
of a command whose work is a file).
Every option is checked before any model or image is loaded; images and logs are written atomically (temporary
file + rename), so OUT never holds a partial file, and an input image is never overwritten.

The runtime commands (stylize, invert, texture, export-vjp, info) never import torch. Each command builds a
``nst_core.spec.Spec`` (or the call of another stage) from the arguments, calls nst_core and prints: this module
holds no logic of its own beyond the arguments.

Imports: at module level only the light stages (errors, process, spec: the standard library and ~30 ms). The
heavy ones (NumPy, SciPy, Pillow, onnx, ONNX Runtime, about 0.5 s) are imported inside the functions that use them,
after ``main`` has re-executed for huge pages (so they are not loaded twice) and taken the stop signals (so a
Ctrl-C while they load is one line and exit status 130: tests/test_robustness.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from nst_core.errors import NSTError
from nst_core.process import interrupts, memory, streams
from nst_core.serve import settings as serve_settings
from nst_core.spec import presets
from nst_core.spec.spec import (ADAM_LR, DEFAULT_ITERATIONS, GD_LR, LBFGS_HISTORY, WHOLE_WEIGHT, Spec, override,
                                resolve, to_dict)

#: Default images when CONTENT / STYLE are not given: ../shared/images beside the repository, if it exists.
DEFAULT_IMAGES = Path(__file__).resolve().parent.parent / "shared" / "images"
DEFAULT_CONTENT = DEFAULT_IMAGES / "tubingen.jpg"
DEFAULT_STYLE = DEFAULT_IMAGES / "starry_night.jpg"
CS231N_TAPS = "1,3,4,6,7"

EXIT_INPUT = 2
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 130  # SIGINT; SIGTERM and SIGHUP give 128 + their number (nst_core.process.interrupts)


# ---------------------------------------------------------------------------------------------------------------
# Argument parsing


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``nst stylize: error: <message> (see nst stylize --help)``, exit 2.

    Values such as ``-1,2``, ``-inf``, ``-nan`` or ``-1e3`` are option VALUES (argparse would take them for
    unknown options and say "expected one argument"), so that ``--style-weights -1,1,1,1`` reaches the
    validation and gets its real error. No option of nst starts with a digit, '.', 'inf' or 'nan'.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(?:\d|\.\d|inf|nan)[\w.,+-]*$", re.IGNORECASE)

    def error(self, message):
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _int_list(text: str) -> tuple:
    if text.strip() == "":
        return ()
    return tuple(_int(t.strip()) for t in text.split(","))


def _float_list(text: str) -> tuple:
    if text.strip() == "":
        return ()
    return tuple(_float(t.strip()) for t in text.split(","))


def _scales(text: str):
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not auto or a whole number: {text!r}") from None


def _fmt(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def _add_common(p: argparse.ArgumentParser, task: str, default_out: str, compare: bool = False) -> None:
    """Options shared by stylize / invert / texture; the help of each names its default. ``compare``: the problem
    options of stylize for ``nst compare`` (-o is a directory; no --optimizer, --lr, --save-every, --log)."""
    _add_sizes(p, task, default_out, compare)
    _add_weights(p, task, compare)
    _add_run(p, task, default_out, compare)


def _add_sizes(p: argparse.ArgumentParser, task: str, default_out: str, compare: bool) -> None:
    """-o, --preset, --spec, the sizes and the schedule."""
    from nst_core.schedule.plan import MIN_STEP, RATIO  # heavy: see the module docstring

    sn = presets.PRESETS[presets.DEFAULT_PRESET]
    inv, tex = presets.INVERSION, presets.TEXTURE
    if compare:
        p.add_argument("-o", "--output", metavar="DIR", default=default_out,
                       help="output directory for history.csv, loss.png, images.png, summary.md, summary.json and "
                            f"the final images; created if missing, its parent must exist (default: {default_out})")
    else:
        p.add_argument("-o", "--output", metavar="OUT", default=default_out,
                       help="output image; the format follows the extension (.png, .jpg, ...) "
                            f"(default: {default_out})")
    if task == "stylize":
        p.add_argument("--preset", choices=tuple(presets.PRESETS), default=None,
                       help="CS231n parameter set: sizes, layers and weights; options given explicitly override it "
                            f"(default: {presets.DEFAULT_PRESET}'s values)")
    size_default = {"stylize": f"the preset's, {sn['image_size']}", "invert": str(inv["image_size"]),
                    "texture": str(tex["image_size"])}[task]
    what = "the style image's (the output has its aspect ratio)" if task == "texture" else "the content image's"
    p.add_argument("--size", type=_int, metavar="PX",
                   help=f"smaller edge of the output in pixels, {what} (default: {size_default})")
    p.add_argument("--calibration-size", type=_int, metavar="PX",
                   help="the size at which the weights are CS231n's; at other sizes the content and TV weights are "
                        "multiplied by (pixels at PX) / (pixels at --size) so the look holds, and the style size "
                        "follows --size; 0: the exercise's raw sums and fixed style size at any size "
                        f"(default: {sn['image_size']})")
    if not compare:
        p.add_argument("--spec", metavar="FILE",
                       help="run the job a picture made by nst records (its recipe), or a JSON spec; options given "
                            "here override the file's, and CONTENT / STYLE its images (default: none)")
        p.add_argument("--scales", type=_scales, metavar="auto|N", default=None,
                       help="coarse-to-fine: paint at the calibration size first, then upsample and refine in steps "
                            f"of at most {RATIO:g}x up to --size, --iterations evaluations at the first "
                            "scale and fewer at each larger one; auto: one scale below "
                            f"{MIN_STEP:g}x the calibration size, more above; 1: one scale at --size "
                            "(default: auto)")
        if task != "invert":
            p.add_argument("--whole-weight", type=_float, metavar="W",
                           help="coarse-to-fine: weight of the first scale's style term on the picture "
                                "downsampled to the first scale, kept at every later scale so that the picture "
                                "seen as a whole stays painted; 0 turns it off (default: "
                                f"{WHOLE_WEIGHT:g})")
    if task != "invert":
        default = f"the preset's, {sn['style_size']}" if task == "stylize" else "--size"
        if task == "stylize":
            default += ", scaled with --size, never beyond the style file"
        p.add_argument("--style-size", type=_int, metavar="PX",
                       help=f"smaller edge of the style image when its Gram matrices are computed, at --size; the "
                            f"earlier scales of a coarse-to-fine run scale it down (default: {default})")


def _add_weights(p: argparse.ArgumentParser, task: str, compare: bool) -> None:
    """The layers and weights of the losses."""
    sn = presets.PRESETS[presets.DEFAULT_PRESET]
    inv, tex = presets.INVERSION, presets.TEXTURE
    if task != "texture":
        cl = sn["content_layer"] if task == "stylize" else inv["content_layer"]
        cw = sn["content_weight"] if task == "stylize" else inv["content_weight"]
        pre = "the preset's, " if task == "stylize" else ""
        p.add_argument("--content-layer", type=_int, metavar="L",
                       help=f"SqueezeNet 1.1 features index 0..12 of the content loss (default: {pre}{cl})")
        p.add_argument("--content-weight", type=_float, metavar="W",
                       help=f"weight of the content loss, >= 0 (default: {pre}{cw:g})")
    if task != "invert":
        src = sn if task == "stylize" else tex
        pre = "the preset's, " if task == "stylize" else ""
        p.add_argument("--style-layers", type=_int_list, metavar="L,L,..",
                       help=f"comma-separated features indices 0..12 of the style loss "
                            f"(default: {pre}{_fmt(src['style_layers'])})")
        p.add_argument("--style-weights", type=_float_list, metavar="W,W,..",
                       help=f"one weight >= 0 per style layer, in CS231n units (multiplied by --style-scale) "
                            f"(default: {pre}{_fmt(src['style_weights'])})")
        scales = ", ".join(f"{k} {v:g}" for k, v in presets.DEFAULT_STYLE_SCALE.items())
        if compare:
            scales = "1, CS231n's exact objective, the one its Adam recipe was tuned for; one value for all optimizers"
        p.add_argument("--style-scale", type=_float, metavar="S",
                       help="multiplies every style weight: CS231n's weights were tuned for its Adam recipe; "
                            f"optimizers that minimise the loss need larger ones (default: {scales})")
    tv = {"stylize": f"the preset's, {sn['tv_weight']:g}", "invert": f"{inv['tv_weight']:g}",
          "texture": f"{tex['tv_weight']:g}"}[task]
    p.add_argument("--tv-weight", type=_float, metavar="W", help=f"weight of the total-variation loss, >= 0 "
                                                                  f"(default: {tv})")


def _add_run(p: argparse.ArgumentParser, task: str, default_out: str, compare: bool) -> None:
    """The start, the optimizer and its budget, the artist controls, the files of the run, the runtime."""
    from nst_core.inputs.images import DEFAULT_MAX_PIXELS  # heavy: see the module docstring
    inits = {"stylize": ("content", "noise", "style"), "invert": ("noise", "content"),
             "texture": ("noise", "style")}[task]
    p.add_argument("--init", choices=inits, default=None,
                   help="start image: the content image, noise (uniform(0,1) in normalised space, CS231n's "
                        f"init_random) or the style image resized to the output (default: {inits[0]})")
    if not compare:
        p.add_argument("--optimizer", choices=("lbfgs", "lbfgsb", "adam", "gd"), default=None,
                       help="lbfgs: our L-BFGS, projected onto the valid pixel range; lbfgsb: SciPy's L-BFGS-B "
                            "within it; adam: the CS231n recipe; gd: projected gradient descent (default: lbfgs)")
    p.add_argument("--iterations", type=_int, metavar="N", default=None,
                   help="objective evaluations (forward + backward passes), not optimizer iterations; with "
                        "several --scales, those of the first scale (default: "
                        f"{DEFAULT_ITERATIONS})")
    if not compare:
        p.add_argument("--lr", type=_float, metavar="LR",
                       help=f"adam: initial learning rate, lr/30 from 90%% of the evaluations on (default: "
                            f"{ADAM_LR:g}, CS231n); gd: step size (default: {GD_LR:g}); "
                            "not used by lbfgs / lbfgsb; with several --scales the first scale's (adam: lr/30 at "
                            "the later ones, gd: times the pixel-count ratio)")
    _add_artist(p, task)
    p.add_argument("--history", type=_int, metavar="M",
                   help=f"L-BFGS memory, correction pairs kept (default: {LBFGS_HISTORY}; the later scales "
                        "of a coarse-to-fine run keep a quarter of their budget, at least 5, unless M is given)")
    p.add_argument("--seed", type=_int, metavar="N",
                   help="seed of the noise initialisation (default: none, a different start each run)")
    if not compare:
        p.add_argument("--save-every", type=_int, metavar="N", default=0,
                       help="every N evaluations, save the best image so far beside OUT, numbered by evaluation "
                            f"(e.g. {Path(default_out).stem}_0050{Path(default_out).suffix}) (default: 0, off)")
        p.add_argument("--log", metavar="FILE.csv",
                       help="write the history as CSV: evaluation,seconds,loss,content,style,tv,scale (the "
                            "scale's smaller edge, px), one row per evaluation (default: none)")
    _add_runtime(p)
    p.add_argument("--max-pixels", type=_int, metavar="N",
                   help="largest input image to decode, in pixels (width x height), for files you trust: 100 MP "
                        "phone pictures exceed the default; 0: no limit (default: Pillow's decompression-bomb limit, "
                        f"{DEFAULT_MAX_PIXELS})")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines and no summary table (default: off)" if compare else
                   "no progress bar and no summary line (default: off; the bar is shown only on a terminal)")


def _add_artist(p: argparse.ArgumentParser, task: str) -> None:
    """--original-colors and --style-blend (stylize, compare) and --pooling (every transfer task)."""
    if task == "stylize":
        p.add_argument("--original-colors", choices=("off", "luminance", "match"), default=None,
                       help="keep the content's colours: luminance (transfer on luminance only, then the content's "
                            "chroma) or match (the style's colours matched to the content's first) "
                            "(default: off)")
        p.add_argument("--style-blend", type=_float_list, metavar="W,W,..",
                       help="one weight >= 0 per STYLE image, normalised to sum 1: each style layer's target Gram "
                            "matrix is the weighted sum of the styles' (default: equal weights)")
    p.add_argument("--pooling", choices=("max", "avg"), default=None,
                   help="the network's pooling: max (SqueezeNet's, CS231n's) or avg (every max pool becomes an "
                        "average pool, same windows; smoother pictures) (default: max)")


def _add_runtime(p: argparse.ArgumentParser, device: bool = True) -> None:
    if device:
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                       help="ONNX Runtime execution provider: cuda needs onnxruntime-gpu; auto uses CUDA when "
                            "available (default: auto)")
    p.add_argument("--model", metavar="PATH",
                   help="features.onnx made by `nst export` (default: $NST_HOME/features.onnx, else "
                        "~/.cache/nst/features.onnx)")


def _add_bundle_options(p: argparse.ArgumentParser) -> None:
    """The loss options of ``nst bundle`` (stylize's, without the optimizer's)."""
    p.add_argument("--preset", choices=tuple(presets.PRESETS), default=None,
                   help=f"CS231n parameter set (default: {presets.DEFAULT_PRESET}'s values)")
    p.add_argument("--size", type=_int, metavar="PX", help="content size hosts use by default (default: the preset's)")
    p.add_argument("--style-size", type=_int, metavar="PX", help="style size (default: the preset's)")
    p.add_argument("--content-layer", type=_int, metavar="L", help="content layer 0..12 (default: the preset's)")
    p.add_argument("--content-weight", type=_float, metavar="W", help="content weight (default: the preset's)")
    p.add_argument("--style-layers", type=_int_list, metavar="L,L,..", help="style layers (default: the preset's)")
    p.add_argument("--style-weights", type=_float_list, metavar="W,W,..",
                   help="one weight per style layer (default: the preset's)")
    p.add_argument("--style-scale", type=_float, metavar="S",
                   help="multiplies the style weights (default: L-BFGS's, 100)")
    p.add_argument("--tv-weight", type=_float, metavar="W", help="TV weight (default: the preset's)")
    p.add_argument("--calibration-size", type=_int, metavar="PX",
                   help="the size at which hosts feed the weights as given; at other sizes they multiply the content "
                        "and TV weights by (pixels at PX) / (pixels at their size), as nst stylize does; 0: the raw "
                        "sums at any size (default: the preset's, 192)")
    _add_runtime(p, device=False)


def _add_transfer_commands(sub) -> None:
    """stylize, invert, texture."""
    p = sub.add_parser("stylize", help="paint CONTENT in the style of STYLE",
                       description="Style transfer (Gatys et al.; CS231n's losses). Without CONTENT and STYLE, "
                                   f"paints {DEFAULT_CONTENT.name} in the style of {DEFAULT_STYLE.name} from "
                                   f"{DEFAULT_IMAGES} (when it exists).",
                       epilog="Exit status: 0 ok, 2 bad input, 3 diverged (best finite image saved), "
                              "130 interrupted (best image saved).")
    p.add_argument("content", nargs="?", metavar="CONTENT",
                   help=f"content image (default: {DEFAULT_CONTENT})")
    p.add_argument("style", nargs="*", metavar="STYLE",
                   help=f"style image; several are blended (--style-blend) (default: {DEFAULT_STYLE})")
    _add_common(p, "stylize", "stylized.png")
    p.set_defaults(func=_cmd_transfer, task="stylize")

    p = sub.add_parser("invert", help="reconstruct CONTENT from its features (feature inversion)",
                       description="Feature inversion: start from noise and match CONTENT's features at one "
                                   "layer (style weights 0).",
                       epilog="Exit status: 0 ok, 2 bad input, 3 diverged, 130 interrupted.")
    p.add_argument("content", nargs="?", metavar="CONTENT", help=f"content image (default: {DEFAULT_CONTENT})")
    _add_common(p, "invert", "inverted.png")
    p.set_defaults(func=_cmd_transfer, task="invert", style=None)

    p = sub.add_parser("texture", help="synthesise a texture with STYLE's Gram statistics",
                       description="Texture synthesis: start from noise and match STYLE's Gram matrices "
                                   "(content weight 0).",
                       epilog="Exit status: 0 ok, 2 bad input, 3 diverged, 130 interrupted.")
    p.add_argument("style", nargs="?", metavar="STYLE", help=f"style image (default: {DEFAULT_STYLE})")
    _add_common(p, "texture", "texture.png")
    p.set_defaults(func=_cmd_transfer, task="texture", content=None)


def _add_video_command(sub) -> None:
    """video: the still's problem options, and the clip's own (nst_core.video)."""
    p = sub.add_parser("video", help="paint a clip frame by frame without flicker (needs the video extra)",
                       description="Style transfer on a clip (Ruder et al. 2016): each frame starts from the previous "
                                   "result warped along the optical flow and is kept close to it where the flow is "
                                   "reliable; cuts start a new shot. Shots run one after another. A rerun with the "
                                   "same options continues where a stopped run ended.",
                       epilog="Exit status: 0 ok, 2 bad input, 3 diverged, 128 + the signal when stopped (a playable "
                              "video of the frames done is written).")
    p.add_argument("input", metavar="INPUT", help="a video file, a folder of images or a printf pattern (f/%%04d.png)")
    p.add_argument("style", nargs="+", metavar="STYLE", help="style image; several are blended (--style-blend)")
    p.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="a video (.mp4, .mov, .mkv: H.264; .webm: VP9) or a folder for PNG frames (default: none, "
                        "required)")
    sn = presets.PRESETS[presets.DEFAULT_PRESET]
    p.add_argument("--preset", choices=tuple(presets.PRESETS), default=None,
                   help=f"CS231n parameter set, as nst stylize (default: {presets.DEFAULT_PRESET}'s values)")
    for flag, what in (("--size", f"smaller edge of the painted frames, px (default: the preset's, "
                                  f"{sn['image_size']})"),
                       ("--style-size", "as nst stylize (default: the preset's, scaled with --size)"),
                       ("--calibration-size", f"as nst stylize (default: {sn['image_size']})"),
                       ("--iterations", f"the budget of each shot's first frame (default: {DEFAULT_ITERATIONS})"),
                       ("--history", f"L-BFGS memory, correction pairs (default: {LBFGS_HISTORY})"),
                       ("--seed", "seed of --init noise (default: none)")):
        p.add_argument(flag, type=_int, metavar="N", help=what)
    p.add_argument("--frame-iterations", type=_int, metavar="N",
                   help="the budget of the frames that continue a shot (default: 0.35 x --iterations, 70 of 200)")
    p.add_argument("--temporal-weight", type=_float, metavar="W",
                   help="weight of the temporal loss (the frame kept close to the previous result warped to it; "
                        "0: warped start only) (default: 5)")
    p.add_argument("--frames", metavar="A:B", help="frames A to B-1, counted from 0 (default: all)")
    p.add_argument("--fps", type=_float, metavar="F",
                   help="the output's frame rate (default: the input's, 25 for images; the audio is copied only "
                        "at the input's rate)")
    _add_weights(p, "stylize", False)
    p.add_argument("--init", choices=("content", "noise", "style"), default=None,
                   help="start of each shot's first frame, as nst stylize (default: content)")
    p.add_argument("--optimizer", choices=("lbfgs", "lbfgsb", "adam", "gd"), default=None,
                   help="as nst stylize (default: lbfgs)")
    p.add_argument("--lr", type=_float, metavar="LR", help=f"as nst stylize (default: adam {ADAM_LR:g}, gd {GD_LR:g})")
    _add_artist(p, "stylize")
    _add_runtime(p)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary line (default: off; the bar is shown only on a terminal)")
    p.set_defaults(func=_cmd_video, task="stylize")


def _add_compare_command(sub) -> None:
    """compare."""
    p = sub.add_parser("compare", help="run several optimizers on the same problem and compare them",
                       description="Run L-BFGS, Adam (the CS231n recipe, and plain Adam at given rates) and gradient "
                                   "descent on the same style-transfer objective, start image and budget of objective "
                                   "evaluations; write history.csv, loss.png, images.png, summary.md, summary.json "
                                   "and each optimizer's final image into DIR.",
                       epilog="Exit status: 0 ok (also when an optimizer diverges: the summary says so), 2 bad input, "
                              "130 interrupted (the optimizers finished before Ctrl-C are written).")
    p.add_argument("content", nargs="?", metavar="CONTENT", help=f"content image (default: {DEFAULT_CONTENT})")
    p.add_argument("style", nargs="*", metavar="STYLE",
                   help=f"style image; several are blended (--style-blend) (default: {DEFAULT_STYLE})")
    _add_common(p, "stylize", "compare", compare=True)
    p.add_argument("--optimizers", metavar="NAME,..",
                   help="comma-separated, run in this order: lbfgs (our L-BFGS, --history), lbfgsb (SciPy L-BFGS-B, "
                        "--history), adam (the CS231n recipe), "
                        "adam-lr (plain Adam at each --adam-lr), gd (gradient descent, --gd-lr) "
                        "(default: lbfgs,adam,gd, plus adam-lr when --adam-lr is given)")
    p.add_argument("--adam-lr", type=_float, action="append", dest="adam_lrs", metavar="LR",
                   help="learning rate of a plain Adam run (fixed, no schedule, projected onto the pixel range); "
                        "repeat for several, e.g. --adam-lr 0.03 --adam-lr 0.1 (default: none)")
    p.add_argument("--gd-lr", type=_float, metavar="LR",
                   help="gradient descent's fixed step (default: 0.002 at style scale <= 1, "
                        "0.002 * scale^-0.8 above)")
    p.add_argument("--checkpoints", type=_int_list, metavar="N,N,..", default=(10, 50),
                   help="evaluations at which images.png shows each optimizer's best image so far, besides its final "
                        "one (default: 10,50)")
    p.set_defaults(func=_cmd_compare)


def _add_model_commands(sub) -> None:
    """export, export-vjp, info."""
    p = sub.add_parser("export", help="export SqueezeNet 1.1's feature taps to ONNX (needs torch)",
                       description="Write features.onnx (SqueezeNet 1.1, 13 taps) atomically. Needs torch: "
                                   "pip install 'nst-onnx[export]'.")
    p.add_argument("--weights", metavar="FILE",
                   help="torchvision-keyed .npz or .pth weights (default: download torchvision's published ones)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: $NST_HOME, else ~/.cache/nst)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("export-vjp", help="write a self-contained VJP model (image + cotangents -> dL/dx)",
                       description="Write one ONNX model with inputs image and grad_features.K (one per tap) and "
                                   "output grad_image = sum_K J_K^T grad_features.K, in standard ops, for hosts in "
                                   "other languages.")
    p.add_argument("--taps", type=_int_list, default=_int_list(CS231N_TAPS), metavar="L,L,..",
                   help=f"feature taps (features indices 0..12) with a cotangent input (default: {CS231N_TAPS})")
    p.add_argument("--height", type=_int, metavar="H", help="fix the image height (default: dynamic)")
    p.add_argument("--width", type=_int, metavar="W", help="fix the image width (default: dynamic)")
    p.add_argument("--out", metavar="FILE.onnx", default="vjp.onnx", help="output model (default: vjp.onnx)")
    _add_runtime(p, device=False)
    p.set_defaults(func=_cmd_export_vjp)

    p = sub.add_parser("info", help="show the feature model's path, taps and metadata, or a picture's recipe",
                       description="Show the feature model's path, taps and metadata; with PICTURE, the recipe "
                                   "(the job, nst's version, the weights' and inputs' SHA-256) a picture made by nst "
                                   "carries.")
    p.add_argument("picture", nargs="?", metavar="PICTURE", help="a PNG written by nst, or a JSON spec "
                                                                 "(default: none, the model)")
    _add_runtime(p, device=False)
    p.set_defaults(func=_cmd_info)


def _add_host_commands(sub) -> None:
    """bundle, serve-web."""
    p = sub.add_parser("bundle", help="write a host bundle (targets.onnx, objective.onnx, manifest.json)",
                       description="Write DIR: float32-only ONNX models of the loss targets and of the whole "
                                   "objective (losses, TV and dL/dimage), a manifest.json describing them, and a "
                                   "reference case, for hosts in other languages (docs/hosts.md). An existing "
                                   "bundle in DIR is replaced atomically; files in it that nst bundle did not write "
                                   "(notes, say) are kept. With --check, validate DIR instead.",
                       epilog="Exit status: 0 ok, 2 bad input or a bundle that fails its check.")
    p.add_argument("directory", metavar="DIR", help="bundle directory (created; an old bundle there is replaced)")
    p.add_argument("--check", action="store_true",
                   help="validate DIR against its manifest: models load, reference case reproduces (default: off)")
    _add_bundle_options(p)
    p.set_defaults(func=_cmd_bundle)

    p = sub.add_parser("serve-web", help="serve the browser host (hosts/web) and a bundle on localhost",
                       description="Serve the page of hosts/web, onnxruntime-web's files and the bundle DIR over "
                                   "HTTP with the cross-origin isolation headers (COOP/COEP) that let the "
                                   "WebAssembly backend use threads. Stop with Ctrl-C.",
                       epilog="Exit status: 2 a missing bundle, a missing npm install or a port in use; 130 Ctrl-C.")
    p.add_argument("--bundle", metavar="DIR", default="web-bundle",
                   help="bundle directory made by nst bundle (default: web-bundle)")
    p.add_argument("--port", type=_int, default=None, metavar="P",
                   help="TCP port (default: 8017; 0 picks a free one, printed on the first line)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to bind (default: 127.0.0.1; browsers treat plain http from another address as "
                        "insecure, and then give the page one thread)")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr (default: off)")
    p.set_defaults(func=_cmd_serve_web)


def _add_batch_command(sub) -> None:
    """batch: a manifest's jobs on the job engine (nst_core.jobs.batch)."""
    p = sub.add_parser("batch", help="run the jobs of a JSON Lines manifest on Dask workers",
                       description="One job per manifest line: {\"content\": PATH, \"style\": PATH or [PATHS], "
                                   "\"output\": NAME, <option>: value, ...}. Rerunning the same command resumes.",
                       epilog="Exit status: 0 all jobs succeeded, 1 some failed (see OUTDIR/summary.json), 2 bad "
                              "invocation, 130 / 143 stopped (running jobs' best pictures saved).")
    p.add_argument("manifest", metavar="MANIFEST", help="JSON Lines file; relative paths are relative to it")
    p.add_argument("-o", "--output", metavar="OUTDIR", required=True,
                   help="directory of the outputs, the summary and the default store (default: none, required)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDR",
                       help="a Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: an embedded cluster)")
    where.add_argument("--workers", type=_int, metavar="N", default=None,
                       help="worker processes of the embedded cluster (default: one per core; 1 for print-size jobs "
                            "that need all the memory)")
    p.add_argument("--store", metavar="URL", help="job store: a SQLite path or postgresql://... "
                                                   "(default: OUTDIR/nst-jobs.sqlite)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="report only problems: bad rows, failed jobs (default: also a progress bar on a "
                        "terminal, else a line per job)")
    p.set_defaults(func=_cmd_batch)


def _add_serve_command(sub) -> None:
    """serve: the HTTP service (nst_core.serve; its options are nst_core/serve/settings.py's)."""
    p = sub.add_parser("serve", help="serve style transfer over HTTP: a /v1 API and a page (needs the serve extra)",
                       description="An HTTP service: POST /v1/jobs (multipart content, style, spec), progress as "
                                   "Server-Sent Events, previews, results with their recipe, cancel; a page at /. "
                                   "Jobs run on Dask workers (an embedded cluster, or --scheduler) and are recorded "
                                   "in a store (SQLite under --data, or --store). OpenAPI: /v1/openapi.json.",
                       epilog="Exit status: 0 stopped by SIGTERM / Ctrl-C, 2 a bad option, a port in use, or a "
                              "non-loopback --host without --token-file.")
    serve_settings.add_arguments(p, number=_int)
    p.set_defaults(func=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nst", description="Optimization-based neural style transfer on ONNX Runtime "
                                             "(SqueezeNet 1.1 features, CS231n losses).",
                     epilog="Exit status: 0 ok, 2 bad input, 3 diverged (best finite image saved), "
                            "130 interrupted (best image saved).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_transfer_commands(sub)
    _add_compare_command(sub)
    _add_video_command(sub)
    _add_model_commands(sub)
    _add_host_commands(sub)
    _add_batch_command(sub)
    _add_serve_command(sub)
    return parser


# ---------------------------------------------------------------------------------------------------------------
# Commands: each turns the parsed arguments into a call of nst_core and prints what happened


_SPEC_OPTIONS = ("preset", "size", "style_size", "content_layer", "content_weight", "style_layers", "style_weights",
                 "style_scale", "tv_weight", "init", "optimizer", "iterations", "lr", "history", "seed", "device",
                 "model", "original_colors", "style_blend", "pooling", "calibration_size", "scales", "whole_weight")


def _default_image(given, default: Path, what: str) -> str:
    if given is not None:
        return given
    if default.is_file():
        return str(default)
    raise NSTError(f"no {what} image given and the default {default} does not exist")


def _given_options(args) -> dict:
    """The Spec fields given on the command line."""
    return {k: getattr(args, k) for k in _SPEC_OPTIONS if getattr(args, k, None) is not None}


def _job(args) -> tuple[Spec, dict]:
    """The resolved job of stylize / invert / texture: the command line's options, over a --spec file's job when one
    is given; the default images when none is given anywhere. Returns it and the file's provenance ({})."""
    from nst_core.outputs import recipe

    task, options, provenance = args.task, _given_options(args), {}
    content = getattr(args, "content", None)
    styles = [args.style] if isinstance(args.style, str) else list(args.style or [])
    if args.spec:
        base, provenance = recipe.read_recipe(args.spec)
        if base.task != task:
            raise NSTError(f"{args.spec}: the recipe is a {base.task} job; run it with nst {base.task} --spec")
        job = override(resolve(base), **options, content=content, styles=tuple(styles) or None)  # None: the file's
    else:
        job = resolve(Spec(task=task, content=content, styles=tuple(styles), **options))
    if task != "texture" and job.content is None:
        job = override(job, content=_default_image(None, DEFAULT_CONTENT, "content"))
    if task != "invert" and not job.styles:
        job = override(job, styles=(_default_image(None, DEFAULT_STYLE, "style"),))
    return job, provenance


def _check_paths(args, inputs: list) -> None:
    """Every output path, before any work: the picture, the log, --save-every."""
    from nst_core.outputs.files import check_output_path
    from nst_core.outputs.runfiles import check_log_path, check_not_input

    if args.save_every < 0:
        raise NSTError(f"--save-every must be >= 0, got {args.save_every}")
    check_output_path(args.output)
    check_not_input(args.output, inputs, "the output")
    if args.log:
        check_log_path(args.log, inputs)
        if os.path.abspath(args.log) == os.path.abspath(args.output):
            raise NSTError(f"{args.log}: the log and the output image are the same file")


def _progress(args, job: Spec, steps, inputs: list, text: dict):
    """The callback of a run: progress bar (on a terminal), best image, intermediates every --save-every."""
    import tqdm

    from nst_core.inputs.colour import finisher
    from nst_core.inputs.images import open_image
    from nst_core.outputs.runfiles import Progress

    bar = None
    if not args.quiet and sys.stderr.isatty():
        bar = tqdm.tqdm(total=sum(b for _, b in steps), file=sys.stderr, unit="eval", dynamic_ncols=True,
                        leave=False)
    picture = finisher("luminance", open_image(job.content)) if (
        args.save_every and job.original_colors == "luminance") else None
    warn = lambda line: print(line, file=sys.stderr)  # noqa: E731
    return Progress(args.output, steps, args.save_every, inputs, text, bar=bar, warn=warn,
                    **({"picture": picture} if picture else {}))


def _kept(result) -> str:
    """Which picture an interrupted run saves, for its message: the best so far, or Adam's latest point
    (``optim.Result.kept``)."""
    at = f"evaluation {result.evaluation}, loss {result.loss:.6g}"
    if result.kept != "latest":
        return f"the best image so far ({at})"
    scales = getattr(result, "scales", None) or [result]
    decay = result.info.get("decay_at")
    why = "gradient descent has not yet gone below the start's loss"
    if result.optimizer == "adam":
        until = f" until evaluation {result.n_evals - scales[-1].n_evals + decay}" if decay else ""
        why = f"Adam's recipe keeps its large first learning rate{until}, where its loss is highest by design"
    return f"the latest image ({at}), not the best (evaluation {result.best_evaluation}): {why}"


def _finish_transfer(args, image, result, inputs: list, text: dict, seconds: float) -> int:
    """Save the picture (with its recipe) and say how the run ended; the exit status."""
    from nst_core.outputs.files import save_image
    from nst_core.outputs.runfiles import write_log

    out = args.output
    if args.log:
        write_log(args.log, result, min(image.shape[:2]))
    if result.status == "interrupted":
        if result.evaluation is None:
            print(f"nst: {interrupts.stopped_by()} before the first evaluation; nothing saved", file=sys.stderr)
        else:
            save_image(out, image, forbid=inputs, text=text)
            print(f"nst: {interrupts.stopped_by()} after {result.n_evals} evaluations; saved {_kept(result)} to {out}",
                  file=sys.stderr)
        return interrupts.exit_status()
    if result.status == "nonfinite":
        detail = result.message.split(";")[0]
        detail = detail[len("stopped: "):] if detail.startswith("stopped: ") else detail
        if result.best_evaluation is None:
            print(f"nst: error: {detail}; no finite image to save (try smaller weights)", file=sys.stderr)
        else:
            save_image(out, image, forbid=inputs, text=text)
            print(f"nst: error: {detail}; saved the best finite image (evaluation {result.best_evaluation}, "
                  f"loss {result.loss:.6g}) to {out}", file=sys.stderr)
        return EXIT_NONFINITE
    save_image(out, image, forbid=inputs, text=text)
    if not args.quiet:
        parts = ", ".join(f"{k} {v:.4g}" for k, v in result.parts.items())
        h, w = image.shape[:2]
        print(f"wrote {out} ({w}x{h}): loss {result.loss:.6g} ({parts}), {result.n_evals} evaluations "
              f"({result.optimizer}), {seconds:.1f} s")
    return 0


def _cmd_transfer(args) -> int:
    from nst_core import api
    from nst_core.outputs import recipe
    from nst_core.inputs.images import set_max_pixels, upright_size
    from nst_core.schedule import plan, scale_table

    if args.max_pixels is not None:  # the host's decode limit, not the job's: no Spec field, not in the recipe
        set_max_pixels(args.max_pixels)

    job, provenance = _job(args)  # every option, before any file is touched
    inputs = [p for p in [job.content, *job.styles] if p is not None]
    _check_paths(args, inputs)
    for line in recipe.changed_inputs(job, provenance):
        print(f"nst: warning: {line}", file=sys.stderr)
    sizes = upright_size(job.content) if job.content else None, [upright_size(p) for p in job.styles]
    text = recipe.recipe(job, recipe.weights_sha256(job), scales=scale_table(job, *sizes))
    progress = _progress(args, job, plan(job), inputs, text)
    start = time.perf_counter()
    try:
        image, result = api.run(job, callback=progress)
    finally:
        if progress.bar is not None:
            progress.bar.close()
    with interrupts.sigint_deferred():  # a first signal now waits for the picture and the log to be written
        return _finish_transfer(args, image, result, inputs, text, time.perf_counter() - start)


def _cmd_video(args) -> int:
    try:
        from nst_core.video import command
    except ImportError as exc:
        raise NSTError(f"nst video needs the video extra: pip install 'nst-onnx[video]' ({_one_line(exc)})") from None
    return command.run(args, _given_options(args))


def _cmd_compare(args) -> int:
    from nst_core import compare
    from nst_core.inputs.images import set_max_pixels

    if args.max_pixels is not None:
        set_max_pixels(args.max_pixels)

    content = _default_image(args.content, DEFAULT_CONTENT, "content")
    style = args.style or [_default_image(None, DEFAULT_STYLE, "style")]
    style = style[0] if len(style) == 1 else style
    options = _given_options(args)
    iterations = options.pop("iterations", DEFAULT_ITERATIONS)
    history = options.pop("history", LBFGS_HISTORY)
    seed = options.pop("seed", None)
    style_scale = options.pop("style_scale", 1.0)

    def progress(line: str) -> None:
        print(f"nst compare: {line}", file=sys.stderr, flush=True)

    summary = compare.compare(content, style, args.output, optimizers=args.optimizers, iterations=iterations,
                              seed=seed, lbfgs_history=history, adam_lrs=tuple(args.adam_lrs or ()),
                              gd_lr=args.gd_lr, checkpoints=args.checkpoints, style_scale=style_scale,
                              progress=None if args.quiet else progress, **options)
    if summary["files"] and not summary["plots"]:
        print(f"nst compare: note: matplotlib is not installed, so loss.png and images.png were not written; "
              f"install it with: {compare.PLOTS_HINT}", file=sys.stderr)
    if summary["interrupted"] is not None:
        finished = list(summary["optimizers"])
        if finished:
            print(f"nst: {interrupts.stopped_by()} during {summary['interrupted']}; wrote the finished optimizers "
                  f"({', '.join(finished)}) to {args.output}", file=sys.stderr)
        else:
            print(f"nst: {interrupts.stopped_by()} during {summary['interrupted']}; nothing finished, nothing "
                  f"written", file=sys.stderr)
        return interrupts.exit_status()
    if not args.quiet:
        print(f"wrote {', '.join(summary['files'])} to {args.output}")
        print("\n".join(compare.table(summary)))
    return 0


def _cmd_export(args) -> int:
    from nst_core.network import model

    try:  # torch is needed only here
        from export.onnx_export import export_features
    except ImportError as exc:
        if "torch" in str(exc):
            raise NSTError("nst export needs torch: pip install 'nst-onnx[export]'") from None
        raise
    out_dir = Path(args.out).expanduser() if args.out else model.cache_dir()
    if args.weights and not Path(args.weights).expanduser().is_file():
        raise NSTError(f"{args.weights}: no such weights file")
    path = export_features(out_dir, weights=args.weights)
    taps = [o.name for o in model.load_model(path).graph.output]
    print(f"wrote {path}")
    print(f"taps: {', '.join(taps)}")
    return 0


def _cmd_export_vjp(args) -> int:
    from nst_core.hosts.vjp_model import write_vjp_model

    names = write_vjp_model(args.out, args.taps, args.height, args.width, args.model)
    shape = f"{args.height}x{args.width}" if args.height is not None else "dynamic H x W"
    print(f"wrote {args.out}: inputs image [1,3,{shape}] + {', '.join('grad_' + n for n in names)}; "
          f"output grad_image")
    return 0


def _cmd_bundle(args) -> int:
    from nst_core.hosts import bundle

    if args.check:
        report = bundle.check_bundle(args.directory)
        worst = max(report["worst"].items(), key=lambda kv: kv[1] / report["limits"][kv[0]])
        print(f"{report['directory']}: ok (models load; reference case within tolerance, closest: {worst[0]} "
              f"off by {worst[1]:.2g} relative, limit {report['limits'][worst[0]]:g})")
        return 0
    names = ("preset", "size", "style_size", "content_layer", "content_weight", "style_layers", "style_weights",
             "style_scale", "tv_weight", "model", "calibration_size")
    options = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    kept = bundle.foreign_files(args.directory)  # kept by write_bundle (it refuses a directory not a bundle)
    manifest = bundle.write_bundle(args.directory, resolve(Spec(task="stylize", optimizer="lbfgs", **options)))
    w = ", ".join(f"{x['input']}={x['value']:g}" for x in manifest["weights"])
    print(f"wrote {args.directory}: targets.onnx, objective.onnx, manifest.json, reference/ ({w})")
    if kept:
        print(f"kept what nst bundle did not write: {', '.join(kept[:5])}{' ...' if len(kept) > 5 else ''}")
    return 0


def _cmd_serve_web(args) -> int:
    from nst_core.hosts import web

    port = web.DEFAULT_PORT if args.port is None else args.port
    server = web.make_server(args.bundle, port=port, host=args.host, verbose=args.verbose)
    host, port = server.server_address[:2]
    print(f"serving http://{host}:{port}/ (bundle {Path(args.bundle).resolve()}); Ctrl-C to stop", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _cmd_batch(args) -> int:
    try:
        from nst_core.jobs.batch import run_batch
    except ImportError as exc:
        raise NSTError(f"nst batch needs the jobs extra ({exc.name} is missing): "
                       "pip install 'nst-onnx[jobs]'") from None
    if args.workers is not None and args.workers < 1:
        raise NSTError(f"--workers must be >= 1, got {args.workers}")
    return run_batch(args.manifest, args.output, scheduler=args.scheduler, workers=args.workers, store=args.store,
                     quiet=args.quiet)


def _cmd_serve(args) -> int:
    serve_settings.from_args(args)  # a bad option is one line before the heavy imports (checked again by run)
    try:
        from nst_core.serve.command import run
    except ImportError as exc:
        raise NSTError(f"nst serve needs the serve extra ({exc.name} is missing): "
                       "pip install 'nst-onnx[serve]'") from None
    return run(args)


def _cmd_info(args) -> int:
    from nst_core.network import model
    from nst_core.outputs import recipe

    if args.picture is not None:
        job, provenance = recipe.read_recipe(args.picture)
        print(f"recipe of {args.picture}: nst {job.task} --spec {args.picture}")
        print(f"nst: {provenance.get('nst', '?')}; weights SHA-256: {provenance.get('weights_sha256')}")
        for entry in provenance.get("inputs", []) if isinstance(provenance.get("inputs"), list) else []:
            if isinstance(entry, dict):
                print(f"{entry.get('role')}: {entry.get('path')} (SHA-256 {entry.get('sha256')})")
        if provenance.get("note"):
            print(f"note: {provenance['note']}")
        for k, row in enumerate(provenance.get("scales") or [], 1):
            if isinstance(row, dict):
                print(f"scale {k}: " + ", ".join(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
                                                  for key, value in row.items() if value is not None))
        print(json.dumps(to_dict(job), indent=1))
        return 0
    path = model.find_model(args.model)
    onnx_model = model.load_model(path)
    taps = [o.name for o in onnx_model.graph.output]
    print(f"model: {path} ({path.stat().st_size / 1e6:.1f} MB, {len(onnx_model.graph.node)} nodes, opset "
          f"{max((o.version for o in onnx_model.opset_import if o.domain in ('', 'ai.onnx')), default='?')})")
    print(f"taps: {', '.join(taps)}")
    for key, value in model.metadata(onnx_model).items():
        print(f"{key}: {value}")
    mode = memory.arena_mode()
    how = {"off": "no ORT arena, malloc with huge pages" if memory.malloc_uses_huge_pages() else
           "no ORT arena, malloc with 4 KiB pages", "shared": "one ORT arena for all sessions",
           "default": "ORT's arena per session"}[mode]
    print(f"memory: {how} (NST_ORT_ARENA={mode}; see nst_core/process/memory.py)")
    return 0

# ---------------------------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _run_command(argv) -> int:
    """Parse ``argv`` and run its command; every way it can end becomes an exit status and at most one line on
    stderr (see the module docstring)."""
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            return args.func(args)
        except Exception as exc:
            if interrupts.received():
                raise KeyboardInterrupt from None
            if memory.is_allocation_failure(exc):  # ONNX Runtime's std::bad_alloc, as a RuntimeException
                raise MemoryError from None
            raise
    except NSTError as exc:
        print(f"nst: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"nst: {interrupts.stopped_by()}", file=sys.stderr)
        return interrupts.exit_status()
    except MemoryError:
        print(f"nst: error: {memory.OUT_OF_MEMORY}", file=sys.stderr)
        return EXIT_INPUT


def main(argv=None) -> int:
    """Run the ``nst`` command line; returns the exit status (see the module docstring).

    With ``argv`` None (the real command line) the process first re-executes itself once, when that lets glibc's
    malloc back ONNX Runtime's buffers with transparent huge pages (``nst_core.process.memory``: half the peak memory of
    ORT's arena at about its speed).

    Streams (``nst_core.process.streams``): a closed stdin / stdout / stderr is reopened on /dev/null first; a
    write to stdout or stderr that fails (a broken pipe, /dev/full) never raises. Such a failure changes the exit
    status only for ``nst info``, whose output is its work: 141 for a broken pipe, 2 otherwise; the other commands'
    work is their files, and 0 stays 0."""
    streams.reopen_closed()
    if argv is None:
        memory.reexec_with_huge_pages()
    command = next((a for a in (sys.argv[1:] if argv is None else argv) if not str(a).startswith("-")), None)

    # A stop signal (Ctrl-C, SIGTERM, SIGHUP) raises KeyboardInterrupt: the optimizers return the best point so far,
    # the commands save it and exit with 128 + the signal's number. One during an import (NumPy, SciPy and ONNX
    # while the parser is built, about a second; onnxruntime later) can surface as an ImportError, or as the
    # NSTError made from one ("onnxruntime is not installed"), instead: interrupts.received() tells them apart.
    # Only the first signal raises; the exit status is the first one's (nst_core.process.interrupts).
    with interrupts.stop_signals(exiting=True), streams.guarded() as (out, _):
        status = _run_command(argv)
        out.flush()
        if out.error is not None and command == "info" and not out.broken_pipe and status == 0:
            why = _one_line(getattr(out.error, "strerror", None) or out.error)
            print(f"nst: error: cannot write to stdout ({why})", file=sys.stderr)
    return streams.exit_status(status, out, output_is_the_work=command == "info")


if __name__ == "__main__":
    sys.exit(main())
