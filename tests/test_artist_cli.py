"""The artist controls at the command line: nst compare with all three at once writes what it says, and the
luminance mode's saved image has the content's chroma."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from nst_core.inputs import colour
from nst_core.inputs.images import open_image, preprocess

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "nst"
NST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, str(REPO / "cli.py")]
TINY = ["--size", "32", "--style-size", "32", "--iterations", "3", "--device", "cpu"]


def nst(*args, env):
    return subprocess.run(NST + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=120)


def chroma_gap(image: np.ndarray, content) -> float:
    """Mean |Cb, Cr| difference (units of [0, 1]) between a saved image and the content at its size."""
    c = preprocess(content, 32)[0].transpose(1, 2, 0).astype(np.float64) * np.array([0.229, 0.224, 0.225]) \
        + np.array([0.485, 0.456, 0.406])
    return float(np.abs(colour.rgb_to_ycbcr(image / 255.0)[..., 1:] - colour.rgb_to_ycbcr(c)[..., 1:]).mean())


def test_compare_with_every_control(images_dir, env, tmp_path):
    content, s1, s2 = (images_dir / n for n in ("tubingen.jpg", "starry_night.jpg", "the_scream.jpg"))
    out = tmp_path / "cmp"
    r = nst("compare", content, s1, s2, "--style-blend", "2,1", "--original-colors", "luminance", "--pooling", "avg",
            "--optimizers", "lbfgs,adam", "-o", out, "-q", *TINY, env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    p = summary["problem"]
    assert p["original_colors"] == "luminance" and p["pooling"] == "avg" and p["style_blend"] == [2.0, 1.0]
    assert p["style"] == [str(s1), str(s2)]
    md = (out / "summary.md").read_text()
    assert "starry_night.jpg + the_scream.jpg" in md and "original colors luminance" in md and "pooling avg" in md
    for label in ("lbfgs", "adam"):
        image = np.asarray(Image.open(out / f"final_{label}.png").convert("RGB"))
        assert chroma_gap(image, open_image(content)) < 1.5 / 255  # rounding, and clipping at a few pixels


def test_stylize_original_colors_at_the_command_line(images_dir, env, tmp_path):
    content, style = images_dir / "tubingen.jpg", images_dir / "starry_night.jpg"
    gaps = {}
    for mode in ("off", "luminance", "match"):
        out = tmp_path / f"{mode}.png"
        r = nst("stylize", content, style, "--original-colors", mode, "--init", "noise", "--seed", 0, "-o", out,
                *TINY, env=env)  # from noise: without the mode, the colours are far from the photo's
        assert r.returncode == 0, r.stderr
        gaps[mode] = chroma_gap(np.asarray(Image.open(out).convert("RGB")), open_image(content))
    assert gaps["luminance"] < 1.5 / 255 < gaps["off"]
    r = nst("stylize", content, style, "--original-colors", "sepia", "-o", tmp_path / "x.png", *TINY, env=env)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "invalid choice: 'sepia'" in r.stderr
