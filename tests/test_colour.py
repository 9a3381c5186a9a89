"""--original-colors: the colour formulas of nst_core.inputs.colour against direct NumPy / SciPy computations written here,
and the two modes end to end (luminance mode keeps the content's chroma; its luminance comes from the painting)."""
import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from nst_core.spec import make, resolve
from nst_core.inputs import colour
from nst_core import api as transfer
from nst_core.errors import NSTError
from nst_core.inputs.images import MEAN, STD, deprocess, open_image, preprocess

FAST = dict(size=48, style_size=48, iterations=12, device="cpu")
# JFIF's full-range YCbCr (ITU-T T.871), the published coefficients, chroma centred at 0
JFIF = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def rgb(h, w, seed, lo=0.0, hi=1.0):
    return np.random.default_rng(seed).uniform(lo, hi, size=(h, w, 3))


def pixels(x):
    return x[0].transpose(1, 2, 0).astype(np.float64) * np.array(STD) + np.array(MEAN)


# ------------------------------------------------------------------------------------------------ formulas


def test_luminance_and_ycbcr_are_bt601():
    x = rgb(5, 7, 0)
    assert np.allclose(colour.luminance(x), x @ np.array([0.299, 0.587, 0.114]), atol=1e-15)
    assert np.allclose(colour.rgb_to_ycbcr(x), x @ JFIF.T, atol=2e-6)  # the published coefficients are rounded
    assert np.allclose(colour.ycbcr_to_rgb(colour.rgb_to_ycbcr(x)), x, atol=1e-12)
    assert np.allclose(colour.ycbcr_to_rgb(x @ JFIF.T), x, atol=5e-6)
    # PIL's own 8-bit YCbCr (offset 128) agrees within its rounding
    u8 = np.rint(x * 255).astype(np.uint8)
    pil = np.asarray(Image.fromarray(u8).convert("YCbCr"), np.float64)
    ours = colour.rgb_to_ycbcr(u8 / 255.0) * 255 + np.array([0, 128, 128])
    assert np.abs(pil - ours).max() <= 1.0


def test_grey_copies_the_luminance():
    x = rgb(4, 6, 1)
    g = colour.grey(x)
    assert g.dtype == np.float32 and g.shape == x.shape
    for c in range(3):
        assert np.allclose(g[..., c], 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2], atol=1e-6)


def test_match_luminance_against_numpy():
    style, content = rgb(6, 9, 2, 0.2, 0.9), rgb(8, 5, 3, 0.3, 0.6)
    w = np.array([0.299, 0.587, 0.114])
    ys, yc = style @ w, content @ w
    expected = np.clip((ys - ys.mean()) / ys.std() * yc.std() + yc.mean(), 0, 1)
    got = colour.match_luminance(style, content)
    assert got.shape == style.shape
    for c in range(3):
        assert np.allclose(got[..., c], expected, atol=1e-6)
    assert abs(got[..., 0].mean() - yc.mean()) < 1e-6 and abs(got[..., 0].std() - yc.std()) < 1e-6  # no clipping here
    flat = colour.match_luminance(np.full((3, 3, 3), 0.7), content)  # a flat style takes the content's mean
    assert np.allclose(flat, yc.mean(), atol=1e-6)


def test_match_colours_against_scipy_sqrtm():
    style = rgb(7, 8, 4, 0.35, 0.65) @ np.array([[1.0, 0.3, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.6]])
    content = rgb(9, 6, 5, 0.4, 0.6)
    r = colour.RIDGE
    mu_s, mu_c = style.reshape(-1, 3).mean(0), content.reshape(-1, 3).mean(0)
    cov_s = np.cov(style.reshape(-1, 3).T, bias=True) + r * np.eye(3)
    cov_c = np.cov(content.reshape(-1, 3).T, bias=True) + r * np.eye(3)
    a = np.real(scipy.linalg.sqrtm(cov_c)) @ np.linalg.inv(np.real(scipy.linalg.sqrtm(cov_s)))
    expected = np.clip((style.reshape(-1, 3) - mu_s) @ a.T + mu_c, 0, 1).reshape(style.shape)
    got = colour.match_colours(style, content)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-5
    assert 0 < expected.min() and expected.max() < 1  # nothing clipped, so the statistics are the content's
    flat = got.reshape(-1, 3).astype(np.float64)
    assert np.allclose(flat.mean(0), mu_c, atol=1e-6)
    # A C_s A^T = C_c with the ridged covariances; the pixels' own covariance lacks the ridge: r A A^T less
    assert np.allclose(np.cov(flat.T, bias=True) + r * a @ a.T, cov_c, atol=1e-7)
    # the symmetric square root squares back and is symmetric
    s = colour.sym_sqrt(cov_s)
    assert np.allclose(s, s.T) and np.allclose(s @ s, cov_s, atol=1e-12)


def test_match_colours_of_a_grey_style_stays_finite():
    content = rgb(5, 5, 6)
    out = colour.match_colours(np.full((4, 4, 3), 0.5), content)  # C_s = ridge only
    assert np.all(np.isfinite(out)) and np.allclose(out, content.reshape(-1, 3).mean(0), atol=1e-5)


def test_recombine_takes_luminance_from_x_and_chroma_from_content():
    h, w = 6, 8
    content_rgb, x_rgb = rgb(h, w, 7, 0.3, 0.7), rgb(h, w, 8, 0.3, 0.7)
    norm = lambda a: ((a - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)[None]  # noqa: E731
    out = colour.recombine(norm(x_rgb), norm(content_rgb))
    assert out.dtype == np.uint8 and out.shape == (h, w, 3)
    ycc_c, ycc_x = content_rgb @ JFIF.T, x_rgb @ JFIF.T
    expected = np.concatenate([ycc_x[..., :1], ycc_c[..., 1:]], axis=-1) @ np.linalg.inv(JFIF).T
    assert np.abs(out - np.clip(expected, 0, 1) * 255).max() <= 0.5 + 1e-3
    with pytest.raises(NSTError, match="non-finite"):
        colour.recombine(np.full((1, 3, h, w), np.nan), norm(content_rgb))


def test_finisher_takes_the_chroma_at_each_size(images_dir):
    content = open_image(images_dir / "tubingen.jpg")
    finish = colour.finisher("luminance", content)
    for size in (24, 40):  # e.g. the scales of a coarse-to-fine run
        c = preprocess(content, size)
        assert np.array_equal(finish(c), colour.recombine(c, c))
    assert colour.finisher("off", content) is deprocess


def test_unknown_mode_is_a_one_line_error():
    with pytest.raises(NSTError, match="unknown original-colors mode 'sepia'"):
        resolve(make("stylize", original_colors="sepia"))
    with pytest.raises(NSTError, match="unknown option 'original_colors'"):
        resolve(make("texture", original_colors="luminance"))


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def images(images_dir, features_model):
    return dict(content=images_dir / "tubingen.jpg", style=images_dir / "starry_night.jpg",
                model=str(features_model))


def _unclipped(x, content_x):
    """Pixels where luminance(x) + the content's chroma lies inside [0, 1] in every channel (computed here)."""
    y = np.clip(pixels(x), 0, 1) @ JFIF[0]
    ycc = pixels(content_x) @ JFIF.T
    ycc[..., 0] = y
    back = ycc @ np.linalg.inv(JFIF).T
    return np.all((back > 1e-3) & (back < 1 - 1e-3), axis=-1)


def test_luminance_mode_keeps_the_content_chroma(images, images_dir):
    """Two paintings: each output has the photo's chroma and its own optimised image's luminance, and the two
    luminances differ from each other and from the photo's: the luminance is the painting's doing."""
    content_x = preprocess(open_image(images["content"]), FAST["size"])
    content_ycc = pixels(content_x) @ JFIF.T
    lumas = []
    for style in (images["style"], images_dir / "the_scream.jpg"):
        image, result = transfer.stylize(images["content"], style, original_colors="luminance",
                                         model=images["model"], **dict(FAST, iterations=30))
        keep = _unclipped(result.x, content_x)
        assert keep.mean() > 0.9
        out_ycc = (image / 255.0) @ JFIF.T
        # chroma: the content's, within the output's 8-bit rounding (each channel +-0.5/255; |Cb|, |Cr| rows sum
        # to 1)
        assert np.abs(out_ycc[..., 1:] - content_ycc[..., 1:])[keep].max() <= 0.5 / 255 + 1e-4
        # luminance: the optimised image's (rounding again)
        y_x = np.clip(pixels(result.x), 0, 1) @ JFIF[0]
        assert np.abs(out_ycc[..., 0] - y_x)[keep].max() <= 0.5 / 255 + 1e-6
        lumas.append(out_ycc[..., 0])
    assert np.abs(lumas[0] - content_ycc[..., 0]).mean() > 0.01
    assert np.abs(lumas[1] - content_ycc[..., 0]).mean() > 0.01
    assert np.abs(lumas[0] - lumas[1]).mean() > 0.01


def test_luminance_mode_runs_on_luminance(images):
    """The start image and the images the network sees are grey; the style's luminance has the content's mean and
    spread (checked on the images as nst_core.inputs.colour hands them to preprocess)."""
    for init in ("content", "noise", "style"):
        problem = transfer.prepare("stylize", images["content"], images["style"], original_colors="luminance",
                                   model=images["model"], init=init, seed=0, **FAST)
        p = pixels(problem.x0)
        assert np.abs(p - p[..., :1]).max() < 1e-5, init
    content, style = open_image(images["content"]), open_image(images["style"])
    c_img, (s_img,) = colour.network_images("luminance", content, [style])
    c, s = np.asarray(content, np.float64) / 255, np.asarray(style, np.float64) / 255
    yc, ys = c @ JFIF[0], s @ JFIF[0]
    assert np.allclose(c_img[..., 1], yc, atol=1e-5)
    expected = np.clip((ys - ys.mean()) * yc.std() / ys.std() + yc.mean(), 0, 1)
    assert np.allclose(s_img[..., 2], expected, atol=1e-5)


def test_match_mode_transfers_from_the_colour_matched_style(images):
    """With match, the style loss at the start is that of the colour-matched style image (an 8-bit copy made here
    with the SciPy formula), not the original's."""
    content, style = open_image(images["content"]), open_image(images["style"])
    c, s = np.asarray(content, np.float64) / 255, np.asarray(style, np.float64) / 255
    r = colour.RIDGE
    cov = lambda a: np.cov(a.reshape(-1, 3).T, bias=True) + r * np.eye(3)  # noqa: E731
    a = np.real(scipy.linalg.sqrtm(cov(c))) @ np.linalg.inv(np.real(scipy.linalg.sqrtm(cov(s))))
    matched = np.clip((s.reshape(-1, 3) - s.reshape(-1, 3).mean(0)) @ a.T + c.reshape(-1, 3).mean(0), 0, 1)
    matched_pil = Image.fromarray(np.rint(matched.reshape(s.shape) * 255).astype(np.uint8))
    opts = dict(model=images["model"], **FAST)
    style_loss = lambda problem: problem.objective(problem.x0)[2]["style"]  # noqa: E731
    got = style_loss(transfer.prepare("stylize", content, style, original_colors="match", **opts))
    ref = style_loss(transfer.prepare("stylize", content, matched_pil, **opts))
    plain = style_loss(transfer.prepare("stylize", content, style, **opts))
    print(f"style loss at the start: match {got:.6g}, 8-bit matched copy {ref:.6g}, original colours {plain:.6g}")
    assert abs(got - ref) <= 0.1 * abs(plain - ref)  # the copy differs only by its 8-bit rounding
