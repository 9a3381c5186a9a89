"""Print size with every preset and another aspect ratio: issue 14's two quality measures, with and without the
whole-picture term, and side-by-side sheets to look at.

    python bench/bench_print_presets.py [--size 1024] [--reuse]

Cases (images from ../shared/images): scream on Tübingen, composition_vii on Tübingen, starry_night on the Scream
(a 1200x1528 portrait). For each, three ``nst stylize`` runs (fresh processes, every default except the ones named):
the 192 px default picture; ``--size SIZE``; ``--size SIZE --whole-weight 0`` (no whole-picture term,
nst_core/pyramid.py). ``--reuse`` skips a run whose picture already exists in bench/results.

Measured with the torch reference (tests/torch_reference.py), each case with its own preset's style layers and
weights (scale 1, the exercise's):
  seen as a whole  the picture downsampled (Lanczos) to the 192 px picture's shape, its style term against the
                   painting at the preset's style size, as a ratio to the 192 px picture's own (issue 14: <= 3)
  up close         the style term at the picture's own size against the painting at 512 px, as a share of the
                   unpainted photo's at that size (issue 14: <= 5 %)
Writes bench/results/print_presets.json and bench/results/print_presets_<case>.png (left: default, right:
--whole-weight 0; reduced to 512 px high) and prints a table.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from bench.common import IMAGES, WEIGHTS, save_json, start  # noqa: E402

CACHE = REPO / "bench" / "results"
CASES = {"scream": ("tubingen.jpg", "the_scream.jpg", "scream"),
         "composition_vii": ("tubingen.jpg", "composition_vii.jpg", "composition_vii"),
         "portrait": ("the_scream.jpg", "starry_night.jpg", "starry_night")}


def _nst(content: str, style: str, preset: str, out: Path, extra, reuse: bool) -> float:
    """Run ``nst stylize`` in a fresh process (seconds; 0 when reused)."""
    if reuse and out.exists():
        return 0.0
    cmd = [sys.executable, str(REPO / "cli.py"), "stylize", str(IMAGES / content), str(IMAGES / style), "--preset",
           preset, "-o", str(out), "--model", str(CACHE / "features.onnx"), "--device", "cpu", *extra]
    t0 = time.time()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.time() - t0


def _load(path: Path):
    from PIL import Image
    with Image.open(path) as im:
        return im.convert("RGB")


def _term(net, image, style_x, preset: dict) -> float:
    import torch
    from nst_core.inputs.images import preprocess
    from torch_reference import make_loss
    fn = make_loss(net, None, style_x, content_layer=preset["content_layer"], content_weight=0.0, tv_weight=0.0,
                   style_layers=preset["style_layers"], style_weights=preset["style_weights"])
    with torch.no_grad():
        return float(fn(torch.tensor(preprocess(image, None)))[1]["style"])


def measure(net, case: str, pictures: dict) -> dict:
    """{"whole": {name: ratio}, "close": {name: share}} for the pictures {name: PIL image} of one case."""
    from PIL import Image
    from nst_core.inputs.images import open_image, preprocess
    from nst_core.spec.presets import PRESETS
    content, style, name = CASES[case]
    preset = PRESETS[name]
    painting = open_image(IMAGES / style)
    base = pictures["192"]
    at_preset, at_512 = preprocess(painting, preset["style_size"]), preprocess(painting, 512)
    base_term = _term(net, base, at_preset, preset)
    out = {"whole": {}, "close": {}}
    for key, pic in pictures.items():
        if key == "192":
            continue
        small = pic.resize(base.size, Image.Resampling.LANCZOS)
        out["whole"][key] = _term(net, small, at_preset, preset) / base_term
        photo = open_image(IMAGES / content).resize(pic.size, Image.Resampling.BICUBIC)
        out["close"][key] = _term(net, pic, at_512, preset) / _term(net, photo, at_512, preset)
    return out


def sheet(pictures: list, path: Path, height: int = 512) -> None:
    from PIL import Image
    ims = [p.resize((round(p.width * height / p.height), height), Image.Resampling.LANCZOS) for p in pictures]
    canvas = Image.new("RGB", (sum(i.width for i in ims) + 8 * (len(ims) - 1), height), "white")
    x = 0
    for im in ims:
        canvas.paste(im, (x, 0))
        x += im.width + 8
    canvas.save(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--reuse", action="store_true", help="keep pictures already in bench/results")
    args = ap.parse_args(argv)
    results = start(CACHE)
    import torch
    from torch_reference import load_net
    torch.set_num_threads(2)
    net = load_net(WEIGHTS)
    results.update(size=args.size, cases={})
    variants = {"192": [], "default": ["--size", str(args.size)],
                "whole_weight 0": ["--size", str(args.size), "--whole-weight", "0"]}
    print(f"| case | seen as a whole: default / whole_weight 0 | up close: default / whole_weight 0 | seconds |")
    for case, (content, style, preset) in CASES.items():
        paths = {k: CACHE / f"print_presets_{case}_{k.replace(' ', '')}.png" for k in variants}
        seconds = {k: _nst(content, style, preset, paths[k], v, args.reuse) for k, v in variants.items()}
        pictures = {k: _load(p) for k, p in paths.items()}
        row = measure(net, case, pictures)
        row["seconds"] = seconds
        results["cases"][case] = row
        sheet([pictures["default"], pictures["whole_weight 0"]], CACHE / f"print_presets_{case}.png")
        w, c = row["whole"], row["close"]
        print(f"| {case} | {w['default']:.2f}x / {w['whole_weight 0']:.1f}x | {100 * c['default']:.2f} % / "
              f"{100 * c['whole_weight 0']:.2f} % | {seconds['default']:.0f} / {seconds['whole_weight 0']:.0f} |",
              flush=True)
    print(f"wrote {save_json('print_presets', results)}")


if __name__ == "__main__":
    main()
