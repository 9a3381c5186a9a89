"""Weights calibrated to the size (losses.size_factor, transfer.calibration), the coarse-to-fine schedule
(nst_core.schedule) through the API and the CLI, and the memory estimate with its check. Small sizes: schedules
from 64 to 128 px, a few evaluations per scale."""
import csv
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_core.inputs import images as imageio
from nst_core.process import memory
from nst_core import optim
from nst_core import schedule
import nst_core.schedule.problem
import nst_core.schedule.runner
from nst_core import api as transfer
from nst_core.errors import NSTError
from nst_core.inputs.images import MEAN, STD, open_image
from nst_core.losses import size_factor
from nst_core.spec.presets import PRESETS
from nst_core.spec import Spec, make, resolve
from nst_core.api import invert, prepare, stylize, texture

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(REPO / "cli.py")]
SMALL = dict(size=128, calibration_size=64, iterations=3, device="cpu")


@pytest.fixture(scope="module")
def paths(images_dir):
    return {"content": images_dir / "tubingen.jpg", "style": images_dir / "starry_night.jpg"}


# ------------------------------------------------------------------------------------------------ calibration


def test_size_factor_by_hand():
    assert size_factor(384 * 512, 192 * 256) == 0.25
    assert size_factor(192 * 256, 192 * 256) == 1.0
    assert size_factor(50 * 135, 20 * 54) == 1080 / 6750
    assert size_factor(12345, 0) == 1.0  # calibration off
    with pytest.raises(ValueError):
        size_factor(0, 100)


def test_calibration_of_the_preset(paths):
    content, style = open_image(paths["content"]), open_image(paths["style"])  # 1024x768, 1280x1014
    sn = PRESETS["starry_night"]
    at = {}
    for size in (192, 384, 1024):
        at[size] = schedule.calibration(resolve(make("stylize", size=size)), content, style)
    assert dataclasses.asdict(at[192]) == {"size_factor": 1.0, "content_weight": sn["content_weight"], "tv_weight": sn["tv_weight"],
                       "style_size": 192, "pixels": 192 * 256, "calibration_pixels": 192 * 256}
    # 384x512 output: a quarter of the weight; style image at 384 (192 * 384 / 192)
    assert at[384].size_factor == 0.25 and at[384].style_size == 384
    assert at[384].content_weight == sn["content_weight"] * 0.25
    assert at[384].tv_weight == sn["tv_weight"] * 0.25
    # 1024x1365: 49152 / 1397760; the style image would be 1024 (and its file's smaller edge is 1014), but the
    # following stops at STYLE_SIZE_LIMIT, 512
    assert at[1024].size_factor == 49152 / 1397760 and at[1024].style_size == 512
    # a file smaller than the limit caps it: a 400x300 painting at --size 1024 stays at 300 px
    small = schedule.calibration(resolve(make("stylize", size=1024)), content, Image.new("RGB", (400, 300)))
    assert small.style_size == 300
    # scream (224 at 192 px) at 1024 px: 1195 -> 512; composition_vii's own 512 never grows
    assert schedule.calibration(resolve(make("stylize", preset="scream", size=1024)), content, style).style_size == 512
    assert schedule.calibration(resolve(make("stylize", preset="composition_vii", size=1024)), content, style).style_size == 512
    # an explicit style size is kept; calibration 0 keeps the raw weights and the preset's style size
    assert schedule.calibration(resolve(make("stylize", size=384, style_size=300)), content, style).style_size == 300
    raw = schedule.calibration(resolve(make("stylize", size=384, calibration_size=0)), content, style)
    assert (raw.size_factor, raw.content_weight, raw.style_size) == (1.0, sn["content_weight"], 192)
    # scream's style size 224 at 192 px: at 96 px half of it
    scream = resolve(make("stylize", preset="scream", size=96))
    assert schedule.calibration(scream, content, style).style_size == 112


def test_odd_aspect_ratio_uses_the_pixel_counts():
    image = Image.new("RGB", (100, 37))
    cal = schedule.calibration(resolve(make("invert", size=50, calibration_size=20)), image)
    # 50 -> 50 x int(50 * 100 / 37) = 50 x 135; 20 -> 20 x 54
    assert (cal.pixels, cal.calibration_pixels) == (6750, 1080)
    assert cal.content_weight == 6e-2 * 1080 / 6750


def test_rescaled_objective_scales_content_and_tv_only(features_model, paths):
    """The same image at 128 px: with calibration at 64 the content and TV terms are exactly k times the raw ones,
    the style term is unchanged; at the calibration size the objective is the raw one bit for bit."""
    common = dict(size=128, style_size=64, iterations=1, model=features_model, device="cpu")
    raw = prepare("stylize", paths["content"], paths["style"], calibration_size=0, **common)
    cal = prepare("stylize", paths["content"], paths["style"], calibration_size=64, **common)
    k = (64 * 85) / (128 * 170)
    assert cal.calibration.size_factor == k
    _, g_raw, p_raw = raw.objective(raw.x0)
    _, g_cal, p_cal = cal.objective(cal.x0)
    assert p_cal["content"] == pytest.approx(k * p_raw["content"], rel=1e-6)
    assert p_cal["tv"] == pytest.approx(k * p_raw["tv"], rel=1e-12)
    assert p_cal["style"] == p_raw["style"]
    same = prepare("stylize", paths["content"], paths["style"], calibration_size=128, **common)
    loss_same, g_same, p_same = same.objective(same.x0)
    loss_raw, g_raw, p_raw = raw.objective(raw.x0)
    assert loss_same == loss_raw and p_same == p_raw and np.array_equal(g_same, g_raw)


def test_options_are_checked():
    with pytest.raises(NSTError, match="calibration size must be >= 0"):
        resolve(make("stylize", calibration_size=-1))
    with pytest.raises(NSTError, match="scales"):
        resolve(make("stylize", scales=0))
    with pytest.raises(NSTError, match="scales"):
        resolve(make("stylize", scales="many"))
    assert resolve(make("stylize")).calibration_size == 192
    assert resolve(make("invert")).scales == "auto"


# ------------------------------------------------------------------------------------------------ the schedule


def _plan(**options):
    return schedule.plan(resolve(make("stylize", **options)))


def test_sides_and_budgets_by_hand():
    # 1024 from 192: 1 + ceil(log2(1024 / 192)) = 4 scales, geometric: 192 * (16/3) ** (k/3)
    expected = [192, round(192 * (16 / 3) ** (1 / 3)), round(192 * (16 / 3) ** (2 / 3)), 1024]
    assert expected == [192, 335, 586, 1024]
    assert _plan(size=1024) == [(192, 200), (335, round(200 * 192 / 335)), (586, round(200 * 192 / 586)),
                                (1024, round(200 * 192 / 1024))]
    assert _plan(size=256) == [(256, 200)]            # below 1.5 x 192: one scale
    assert _plan(size=288) == [(192, 200), (288, round(200 * 192 / 288))]
    assert _plan(size=1024, scales=1) == [(1024, 200)]
    assert _plan(size=128, calibration_size=64, scales=2, iterations=3) == [(64, 3), (128, 3)]
    assert _plan(size=100, scales=3, iterations=30) == [(25, 30), (50, 20), (100, 20)]  # first = 100 / 2^2
    assert _plan(size=2048, iterations=40)[-1] == (2048, 20)  # MIN_BUDGET
    # calibration off: the first scale is still the preset's image size
    assert [s for s, _ in _plan(size=1024, calibration_size=0)] == [192, 335, 586, 1024]


def test_correction_pairs_per_scale_by_hand():
    # budgets 200 / 115 / 66 / 38: the later scales keep budget // 4 pairs, at least 5, at most the history
    assert schedule.histories(resolve(make("stylize", size=1024))) == [20, 20, 66 // 4, 38 // 4]
    assert schedule.histories(resolve(make("stylize", size=2048))) == [20, 20, 61 // 4, 34 // 4, 5]
    assert schedule.histories(resolve(make("stylize", size=1024, history=20))) == [20] * 4  # given: kept
    assert schedule.histories(resolve(make("stylize", size=1024, history=3))) == [3] * 4
    assert schedule.histories(resolve(make("stylize", size=256))) == [20]


def test_learning_rates_per_scale_by_hand():
    def rates(**options):
        return schedule.learning_rates(resolve(make("stylize", **options)))

    assert schedule.sides(resolve(make("stylize", size=512))) == [192, 314, 512]
    # adam: CS231n's 3.0 at the first scale, the recipe's second rate (3.0 / 30) at the later ones
    assert rates(size=512, optimizer="adam") == [3.0, 0.1, 0.1]
    assert rates(size=512, optimizer="adam", lr=1.5) == pytest.approx([1.5, 0.05, 0.05], rel=1e-15)
    # gd: GD_LR (5e-5) times the pixel-count ratio: (314 / 192) ** 2 = 2.67459, (512 / 192) ** 2 = 7.11111
    assert rates(size=512, optimizer="gd") == pytest.approx([5e-5, 1.337294e-4, 3.555556e-4], rel=1e-6)
    assert rates(size=512, optimizer="gd", lr=1e-6) == pytest.approx([1e-6, 2.674588e-6, 7.111111e-6], rel=1e-6)
    assert rates(size=512) == [None] * 3 and rates(size=512, optimizer="lbfgsb") == [None] * 3
    assert rates(size=256, optimizer="adam") == [3.0] and rates(size=256, optimizer="gd", lr=2e-5) == [2e-5]


@pytest.mark.parametrize("optimizer, lr, first, later", [("adam", None, 3.0, 0.1), ("adam", 0.6, 0.6, 0.02),
                                                         ("gd", None, 5e-5, 2e-4), ("gd", 1e-5, 1e-5, 4e-5)])
def test_each_scale_hands_its_rate_to_the_optimizer(features_model, paths, monkeypatch, optimizer, lr, first, later):
    """64 then 128 px: adam's later rate is the first's / 30 (and its recipe's second rate a 30th of that), gd's
    the first's times (128 / 64) ** 2."""
    name = "adam" if optimizer == "adam" else "gradient_descent"
    real, seen = getattr(optim, name), []

    def spy(objective, x0, budget, **kwargs):
        seen.append((kwargs["lr"], kwargs.get("decayed_lr")))
        return real(objective, x0, budget, **kwargs)

    monkeypatch.setattr(optim, name, spy)
    stylize(paths["content"], paths["style"], model=features_model, optimizer=optimizer, lr=lr, scales=2,
            **dict(SMALL, iterations=2))
    assert [r for r, _ in seen] == pytest.approx([first, later], rel=1e-12)
    if optimizer == "adam":
        assert [d for _, d in seen] == pytest.approx([first / 30, later / 30], rel=1e-12)


def test_a_later_scale_starts_adam_at_the_smaller_rate(features_model, paths):
    """Adam's first step moves each pixel by lr * g / (|g| + eps), i.e. by lr where the gradient is not tiny. At
    the first scale that is CS231n's 3.0, which sends every pixel to the clamp at +-1.5; at the second scale it is
    0.1 (with the recipe restarted at 3.0, as before, the painted picture was thrown away the same way)."""
    xs = []
    _, result = stylize(paths["content"], paths["style"], model=features_model, optimizer="adam", scales=2,
                        callback=lambda rec, x: xs.append(np.array(x)), **SMALL)
    assert result.sides == [64, 128] and len(xs) == 6
    assert np.median(np.abs(xs[1])) == 1.5                 # scale 1: x0 -/+ 3, clamped
    step = np.abs(xs[4] - xs[3])                           # scale 2: its first step
    assert step.max() <= 0.1 * (1 + 1e-12)
    assert np.median(step) == pytest.approx(0.1, rel=1e-6)


def test_upsample_keeps_constants_and_linear_ramps_and_the_pixel_range():
    h, w = 8, 10
    flat = np.full((1, 3, h, w), 0.3)
    up = schedule.upsample(flat, (1, 3, 16, 21))
    assert up.shape == (1, 3, 16, 21) and up.dtype == np.float64
    np.testing.assert_allclose(up, 0.3, rtol=0, atol=1e-6)  # float32 resampling
    # a ramp along x: bicubic (a = -0.5) reproduces linear functions away from the border
    ramp = np.broadcast_to(np.arange(w, dtype=np.float64) * 0.1 - 0.45, (1, 3, h, w)).copy()
    up = schedule.upsample(ramp, (1, 3, 16, 20))
    centres = (np.arange(20) + 0.5) / 2 - 0.5         # source coordinates of the target pixel centres
    np.testing.assert_allclose(up[0, 0, 5, 3:-3], centres[3:-3] * 0.1 - 0.45, atol=1e-5)
    # overshoot at a sharp edge is clipped to the valid range
    hi = (1 - np.asarray(MEAN)) / np.asarray(STD)
    lo = (0 - np.asarray(MEAN)) / np.asarray(STD)
    edge = np.empty((1, 3, h, w))
    edge[0] = np.where(np.arange(w) < w // 2, lo[:, None, None], hi[:, None, None])
    up = schedule.upsample(edge, (1, 3, 32, 40))
    assert (up[0] <= hi[:, None, None]).all() and (up[0] >= lo[:, None, None]).all()


def test_schedule_end_to_end(features_model, paths):
    seen = []
    image, result = stylize(paths["content"], paths["style"], model=features_model, seed=0, scales=2,
                            callback=lambda rec, x: seen.append((rec, np.array(x))), **SMALL)
    assert image.shape == (128, 170, 3)
    assert result.sides == [64, 128] and [r.n_evals for r in result.scales] == [3, 3] and result.n_evals == 6
    assert result.status == "budget" and "scale 2/2 (128 px)" in result.message
    assert [r.evaluation for r in result.history] == [1, 2, 3, 4, 5, 6]
    assert [(r.scale, r.side) for r in result.history] == [(1, 64)] * 3 + [(2, 128)] * 3
    assert [r.evaluation for r in result.scales[1].history] == [1, 2, 3]  # per-scale histories
    seconds = [r.seconds for r in result.history]
    assert seconds == sorted(seconds)
    assert [rec for rec, _ in seen] == result.history
    assert seen[2][1].shape == (1, 3, 64, 85) and seen[3][1].shape == (1, 3, 128, 170)
    # the second scale starts from the first's best, upsampled; its targets and weights are those of a problem
    # prepared at 128 px with the same calibration
    x1 = schedule.upsample(result.scales[0].x, (1, 3, 128, 170))
    np.testing.assert_array_equal(seen[3][1], np.clip(x1, *(b.reshape(x1.shape) for b in
                                                               imageio.pixel_bounds(x1.shape))))
    alone = prepare("stylize", paths["content"], paths["style"], model=features_model, size=128,
                    calibration_size=64, device="cpu")
    loss, _, parts = alone.objective(seen[3][1])  # (BLAS threads may sum TV's squares in another order)
    # plus the first scale's style term on the picture seen as a whole (tests/test_pyramid.py checks its value)
    rec = result.history[3]
    assert rec.loss == pytest.approx(loss + rec.parts["whole"], rel=1e-12) and rec.parts["whole"] > 0
    assert {k: rec.parts[k] for k in parts} == pytest.approx(parts, rel=1e-12)
    assert result.x.shape == (1, 3, 128, 170) and result.loss == result.scales[1].loss
    assert result.best_evaluation == 3 + result.scales[1].best_evaluation
    assert [r.info["history"] for r in result.scales] == [20, 5]  # the later scale's pairs (budget 3: 2 used)


@pytest.mark.parametrize("optimizer", ["lbfgsb", "adam", "gd"])
def test_schedule_with_every_optimizer(features_model, paths, optimizer):
    image, result = stylize(paths["content"], paths["style"], model=features_model, optimizer=optimizer,
                            **dict(SMALL, iterations=2))
    assert image.shape == (128, 170, 3) and result.sides == [64, 128] and result.n_evals == 4
    assert result.optimizer == optimizer and result.status == "budget"


def test_schedule_for_invert_and_texture(features_model, paths):
    image, result = invert(paths["content"], model=features_model, seed=0, **dict(SMALL, iterations=2))
    assert image.shape == (128, 170, 3) and result.sides == [64, 128]
    assert result.history[-1].parts["style"] == 0.0
    image, result = texture(paths["style"], model=features_model, seed=0, **dict(SMALL, iterations=2))
    assert image.shape == (128, 161, 3) and result.sides == [64, 128]  # starry_night is 1280x1014
    assert result.history[-1].parts["content"] == 0.0


@pytest.mark.parametrize("stop_at, shape, scales_run", [(2, (64, 85, 3), 1), (5, (128, 170, 3), 2)])
def test_ctrl_c_keeps_the_best_image_of_the_current_scale(features_model, paths, stop_at, shape, scales_run):
    def callback(record, x):
        if record.evaluation == stop_at:
            raise KeyboardInterrupt

    image, result = stylize(paths["content"], paths["style"], model=features_model, callback=callback,
                            **dict(SMALL, iterations=4))
    assert result.status == "interrupted" and image.shape == shape and len(result.scales) == scales_run
    assert result.n_evals == stop_at and result.sides == [64, 128][:scales_run]
    assert result.best_evaluation is not None and stop_at - 2 < result.best_evaluation <= stop_at


def test_ctrl_c_between_scales_keeps_the_previous_scale(features_model, paths, monkeypatch):
    real, calls = schedule.runner.prepare, [0]

    def prepare(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # building the second scale's targets
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(schedule.runner, "prepare", prepare)
    image, result = stylize(paths["content"], paths["style"], model=features_model, **SMALL)
    assert result.status == "interrupted" and "preparing scale 2 (128 px)" in result.message
    assert image.shape == (64, 85, 3) and result.sides == [64] and result.n_evals == 3
    assert result.best_evaluation == result.scales[0].best_evaluation


def test_nonfinite_stops_the_schedule(features_model, paths, monkeypatch):
    real = schedule.problem.make_objective
    calls = [0]

    def poisoned(*args, **kwargs):
        inner = real(*args, **kwargs)

        def objective(x):
            calls[0] += 1
            loss, grad, parts = inner(x)
            return (math.nan if calls[0] == 5 else loss), grad, parts
        return objective

    monkeypatch.setattr(schedule.problem, "make_objective", poisoned)
    image, result = stylize(paths["content"], paths["style"], model=features_model, **dict(SMALL, iterations=4))
    assert result.status == "nonfinite" and result.n_evals == 5 and image.shape == (128, 170, 3)
    assert len(result.scales) == 2 and result.best_evaluation is None  # scale 2 had no finite evaluation before


def test_cli_schedule_log_intermediates_and_scale_column(env, paths, tmp_path):
    out, log = tmp_path / "out.png", tmp_path / "run.csv"
    r = subprocess.run(CLI + ["stylize", str(paths["content"]), str(paths["style"]), "-o", str(out), "--size",
                              "128", "--calibration-size", "64", "--iterations", "3", "--device", "cpu", "--log",
                              str(log), "--save-every", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(log.open()))
    assert rows[0][-1] == "scale" and [row[-1] for row in rows[1:]] == ["64"] * 3 + ["128"] * 3
    assert [int(row[0]) for row in rows[1:]] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in tmp_path.glob("out_*.png")) == ["out_0002.png", "out_0004.png", "out_0006.png"]
    sizes = {}
    for name in ("out_0002.png", "out_0004.png", "out_0006.png", "out.png"):
        with Image.open(tmp_path / name) as im:
            sizes[name] = im.size
    assert sizes == {"out_0002.png": (85, 64), "out_0004.png": (170, 128), "out_0006.png": (170, 128),
                     "out.png": (170, 128)}
    assert "6 evaluations (lbfgs)" in r.stdout


# ------------------------------------------------------------------------------------------------ memory


def test_too_big_is_one_line_before_any_work(env, features_model, paths, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "headroom", lambda: (1000.0, "free memory"))
    monkeypatch.setattr(schedule.problem.cache, "network", None)  # building a network would fail: none is built
    with pytest.raises(NSTError, match=r"--size 2048 \(2730x2048\) needs about .* GB of memory, 1.0 GB are "
                                       r"available \(free memory\); use a smaller --size"):
        stylize(paths["content"], paths["style"], size=2048, model=features_model)
    r = subprocess.run(CLI + ["stylize", str(paths["content"]), str(paths["style"]), "-o",
                              str(tmp_path / "o.png"), "--size", "60000"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("nst: error: --size 60000 (80000x60000) needs about")
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.png").exists()


CHILD = """
import sys
from nst_core.process import memory
memory.reexec_with_huge_pages()
from nst_core.api import stylize
stylize(sys.argv[1], sys.argv[2], size=int(sys.argv[3]), scales=1, iterations=3, device="cpu")
print([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_memory_estimate_against_measured_peaks(env, paths):
    """The estimate is fitted for malloc with huge pages (the default where the kernel offers them); it was within
    -17.2 % .. +17.0 % of the peaks measured from 256 px to A4 (nst_core/memory.py), so 30 % is allowed either
    way (allocators and libraries differ between machines). Above, 100 MB more are allowed too: at 256 px the
    whole process is ~200-230 MB, its base alone varies by ~30 MB between runs of the same code (seen 200 and
    228 MB), and an estimate that high only refuses a run sooner; below, no slack."""
    if memory.reexec_env(env) is None and not memory.malloc_uses_huge_pages(env):
        pytest.skip("no huge-page malloc here: ORT's arena, for which the estimate is not fitted")
    for size, shape in ((256, (256, 341)), (512, (512, 682))):
        out = subprocess.run([sys.executable, "-c", CHILD, str(paths["content"]), str(paths["style"]), str(size)],
                             env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert out.returncode == 0, out.stderr
        measured = int(out.stdout.split()[-1]) / 1024
        estimate = memory.estimate_peak_mb(shape[0] * shape[1], "lbfgs", 20, 3)
        print(f"\n{size} px: estimated {estimate:.0f} MB, measured {measured:.0f} MB")
        assert 0.7 * measured <= estimate <= max(1.3 * measured, measured + 100)
