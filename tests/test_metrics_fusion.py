"""Fusion metrics: exact known values, an independent SSIM reference, direct = fast, and the three conventions."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from metrics import direct, fast, fusion_metrics
from metrics.conventions import Convention
from metrics.imageio import read_gray

IMPLS = [direct, fast]
IDS = ["direct", "fast"]


def texture(shape: tuple[int, int] = (48, 56), seed: int = 0) -> np.ndarray:
    """Integer-valued 0-255 test image with smooth structure, edges and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    img = 100 + 60 * np.sin(x / 5.0 + seed) * np.cos(y / 7.0) + rng.normal(0, 12, shape)
    img[shape[0] // 3 : shape[0] // 2, :] += 50  # a step edge
    return np.clip(np.round(img), 0, 255)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_entropy_constant_and_uniform(impl):
    assert impl.entropy(np.full((20, 30), 77.0)) == 0.0
    assert impl.entropy(np.arange(256, dtype=float).reshape(16, 16)) == pytest.approx(8.0, abs=1e-12)
    two_levels = np.array([[0.0, 255.0]] * 4)
    assert impl.entropy(two_levels) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_spatial_frequency_known_values(impl):
    assert impl.spatial_frequency(np.full((9, 11), 200.0)) == 0.0
    # rows: (1-0), (4-2) -> mean 2.5; columns: (2-0), (4-1) -> mean 6.5; sqrt(9) = 3
    assert impl.spatial_frequency(np.array([[0.0, 1.0], [2.0, 4.0]])) == pytest.approx(3.0, abs=1e-12)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_self_similarity_is_one(impl):
    x = texture()
    assert impl.correlation(x, x) == pytest.approx(1.0, abs=1e-12)
    assert impl.correlation(x, 255 - x) == pytest.approx(-1.0, abs=1e-12)
    assert impl.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert impl.ssim(x, x, data_range=2.0) == pytest.approx(1.0, abs=1e-12)
    assert impl.vif(x, x) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_vif_constant_reference_counts_as_one(impl):
    # sigma_r = 0 everywhere: num = den = 0, VIF = NaN -> 1 by definition
    assert impl.vif(np.full((40, 40), 90.0), texture((40, 40))) == 1.0


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_cc_of_constant_image_is_nan(impl):
    assert math.isnan(impl.correlation(texture(), np.full((48, 56), 3.0)))


def _qabf_self_expected(img: np.ndarray) -> float:
    """Qabf(x, x, x) from an independent Sobel (scipy.ndimage): A = 1 everywhere and G = g (evaluator quirk)."""
    g = np.hypot(ndimage.sobel(img, axis=1, mode="constant"), ndimage.sobel(img, axis=0, mode="constant"))
    q_g = 0.9994 / (1 + np.exp(-15 * (g - 0.5)))
    q_a = 0.9879 / (1 + np.exp(-22 * (1 - 0.8)))
    return float(np.sum(q_g * q_a * g) / np.sum(g))


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_qabf_of_source_with_itself(impl):
    x = texture()
    value = impl.qabf(x, x, x)
    assert value == pytest.approx(_qabf_self_expected(x), abs=1e-12)
    # without the quirk (G = 1) it would be Q_g(1) Q_a(1) = 0.97543...; the quirk moves it by < 6e-4 relative
    textbook = 0.9994 / (1 + math.exp(-7.5)) * 0.9879 / (1 + math.exp(-4.4))
    assert abs(value - textbook) / textbook < 6e-4


def test_qabf_direct_equals_fast_on_flat_and_edge_cases():
    a = texture(seed=1)
    a[5:20, 5:25] = 128.0  # flat patch: Sx == 0 and Sy == 0 inside
    b = texture(seed=2)
    b[:, 30:] = 0.0
    f = np.round((a + b) / 2)
    f[10:14, :] = a[10:14, :]  # equal strengths, G = g_F branch
    assert fast.qabf(a, b, f) == pytest.approx(direct.qabf(a, b, f), abs=1e-12)


def test_sobel_signs_and_orientation_match_direct():
    img = texture(seed=3)
    img[:, 10:14] = 40.0  # columns where Sx == 0 while Sy != 0
    g_d, a_d = direct.gradient_strength_orientation(img)
    g_f, a_f = fast._gradients(np.ascontiguousarray(img), "t")
    np.testing.assert_array_equal(g_d, g_f)
    np.testing.assert_array_equal(a_d, a_f)
    sx, sy = direct.sobel(img)
    # Sx is left minus right and Sy bottom minus top after convolve2d's flip
    assert sx[5, 8] == pytest.approx(
        (img[4, 7] + 2 * img[5, 7] + img[6, 7]) - (img[4, 9] + 2 * img[5, 9] + img[6, 9]), abs=1e-9
    )
    assert sy[5, 8] == pytest.approx(
        (img[6, 7] + 2 * img[6, 8] + img[6, 9]) - (img[4, 7] + 2 * img[4, 8] + img[4, 9]), abs=1e-9
    )
    assert np.all(a_d[sx == 0] == math.pi / 2)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
@pytest.mark.parametrize("data_range", [255.0, 2.0])
def test_ssim_matches_scikit_image(impl, data_range):
    x = texture(seed=4)
    y = np.clip(x + np.random.default_rng(5).normal(0, 20, x.shape), 0, 255).round()
    expected = structural_similarity(
        x, y, win_size=7, data_range=data_range, use_sample_covariance=True, gaussian_weights=False
    )
    assert impl.ssim(x, y, data_range) == pytest.approx(expected, abs=1e-10)


def test_vif_clamps_direct_equals_fast():
    ref = texture(seed=6)
    ref[:20, :20] = 0.0  # sigma_r < eps
    dist = 255.0 - ref  # negative covariance: g < 0
    dist[25:, 30:] = 17.0  # sigma_d < eps
    assert fast.vif(ref, dist) == pytest.approx(direct.vif(ref, dist), abs=1e-12)
    small = texture((23, 21), seed=7)  # coarse scales have no valid pixels
    assert fast.vif(small, small[::-1]) == pytest.approx(direct.vif(small, small[::-1]), abs=1e-12)


REAL_PAIRS = [("MSRS", "00004N"), ("RoadScene", "FLIR_06974"), ("TNO", "08")]


@pytest.mark.parametrize("dataset,name", REAL_PAIRS)
def test_fast_equals_direct_on_real_pairs(shared_data, dataset, name):
    ir = read_gray(shared_data / dataset / "ir" / f"{name}.png")
    vi = read_gray(shared_data / dataset / "vi" / f"{name}.png")
    noise = np.random.default_rng(0).normal(0, 6, ir.shape)
    fused = np.clip(np.round(0.6 * ir + 0.4 * vi + noise), 0, 255)
    want = direct.fusion_metrics(fused, ir, vi)
    got = fast.fusion_metrics(fused, ir, vi)
    assert set(got) == {"EN", "SF", "CC", "VIF", "Qabf", "SSIM"}
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-4), key
        assert math.isfinite(got[key])
    if dataset == "RoadScene":
        assert ir.shape[0] % 2 == 1 and ir.shape[1] % 2 == 1  # the odd-size case


def test_reading_convention(shared_data, tmp_path):
    vi_path = shared_data / "MSRS" / "vi" / "00004N.png"
    bgr = cv2.imread(str(vi_path), cv2.IMREAD_COLOR).astype(np.float32)
    b, g, r = bgr[..., 0], bgr[..., 1], bgr[..., 2]
    expected = np.round(np.float32(0.299) * r + np.float32(0.587) * g + np.float32(0.114) * b)
    gray = read_gray(vi_path)
    assert gray.dtype == np.float64 and gray.ndim == 2
    assert np.abs(gray - expected).max() <= 1.0  # float32 summation order may flip an exact .5
    assert np.mean(gray != expected) < 1e-3
    # TNO files have three equal channels: same as reading one channel
    tno = shared_data / "TNO" / "ir" / "07.png"
    np.testing.assert_array_equal(read_gray(tno), cv2.imread(str(tno), cv2.IMREAD_GRAYSCALE).astype(np.float64))
    # a gray file reads as its values; half-way values round to even
    img = texture().astype(np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), img)
    np.testing.assert_array_equal(read_gray(tmp_path / "g.png"), img.astype(np.float64))
    assert np.round(2.5) == 2.0 and np.round(3.5) == 4.0


def test_conventions_combine_sources_as_documented():
    a = texture(seed=8)
    b = texture(seed=9)
    f = a.copy()  # fused = infrared: per-source scores differ strongly, so sum and mean differ
    vif_a, vif_b = fast.vif(a, f), fast.vif(b, f)
    ssim_a, ssim_b = fast.ssim(f, a), fast.ssim(f, b)
    ssim2_a, ssim2_b = fast.ssim(f, a, 2.0), fast.ssim(f, b, 2.0)
    cc = (fast.correlation(a, f) + fast.correlation(b, f)) / 2
    assert vif_a == pytest.approx(1.0, abs=1e-8) and abs(vif_b) > 1e-3

    expected = {
        "paper": (cc, vif_a + vif_b, (ssim_a + ssim_b) / 2),
        "cddfuse": (cc, vif_a + vif_b, ssim2_a + ssim2_b),
        "tdfusion": (cc, (vif_a + vif_b) / 2, (ssim_a + ssim_b) / 2),
    }
    for name, (want_cc, want_vif, want_ssim) in expected.items():
        for impl in ("fast", "direct"):
            got = fusion_metrics(f, a, b, convention=name, impl=impl)
            assert got["CC"] == pytest.approx(want_cc, abs=1e-12)
            assert got["VIF"] == pytest.approx(want_vif, abs=1e-10)
            assert got["SSIM"] == pytest.approx(want_ssim, abs=1e-10)
    paper = fusion_metrics(f, a, b, "paper")
    cddfuse = fusion_metrics(f, a, b, "cddfuse")
    tdfusion = fusion_metrics(f, a, b, "tdfusion")
    assert paper["VIF"] == pytest.approx(2 * tdfusion["VIF"])
    assert cddfuse["SSIM"] > 1.0 > paper["SSIM"]  # a sum of two SSIMs near 1
    for key in ("EN", "SF", "CC", "Qabf"):
        assert paper[key] == cddfuse[key] == tdfusion[key]


def test_convention_object():
    assert Convention.parse("PAPER") is Convention.PAPER
    assert (Convention.CDDFUSE.vif_rule, Convention.CDDFUSE.ssim_rule, Convention.CDDFUSE.ssim_data_range) == (
        "sum", "sum", 2.0,
    )
    assert (Convention.TDFUSION.vif_rule, Convention.TDFUSION.ssim_rule) == ("mean", "mean")
    assert "VIF sum" in Convention.PAPER.describe()
    with pytest.raises(ValueError, match="paper, cddfuse, tdfusion"):
        Convention.parse("matlab")


def test_shape_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        fusion_metrics(texture((20, 20)), texture((20, 21)), texture((20, 20)))
    with pytest.raises(ValueError, match="at least 7x7"):
        fusion_metrics(np.zeros((5, 30)), np.zeros((5, 30)), np.zeros((5, 30)))
