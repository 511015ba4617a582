"""Fusion metrics: exact known values, an independent SSIM reference, direct = fast, and the three conventions."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from data.io import read_gray_0_255_metric_convention as read_gray
from metrics import ALL_METRICS, catalog, direct, fast, fusion_metrics
from metrics.conventions import Convention

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


# ---------------------------------------------------------------------------------------------------------------
# SD, AG, MI, MSE, PSNR, SCD (and the MATLAB-style variants): hand-computed values, direct = fast, evaluator match
# ---------------------------------------------------------------------------------------------------------------

SMALL = np.array([[0.0, 1.0, 4.0], [2.0, 5.0, 6.0]])


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_sd_hand_computed(impl):
    # mean 3, squared deviations 9, 1, 1, 9 -> population variance 5
    assert impl.standard_deviation(np.array([[0.0, 2.0], [4.0, 6.0]])) == pytest.approx(math.sqrt(5.0), abs=1e-12)
    assert impl.standard_deviation(np.full((9, 9), 42.0)) == 0.0


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_ag_hand_computed(impl):
    # Gx rows: [1, (4-0)/2, 3], [3, (6-2)/2, 1]; Gy (two rows, one-sided): [2, 4, 2] in both rows.
    # (Gx^2 + Gy^2) / 2: [2.5, 10, 6.5] and [6.5, 10, 2.5].
    expected = (math.sqrt(2.5) + math.sqrt(10.0) + math.sqrt(6.5)) / 3.0
    assert impl.average_gradient(SMALL) == pytest.approx(expected, abs=1e-12)
    assert impl.average_gradient(np.full((8, 9), 7.0)) == 0.0
    ramp = np.tile(np.arange(10.0) * 3.0, (6, 1))  # Gx = 3 everywhere (central = one-sided), Gy = 0
    assert impl.average_gradient(ramp) == pytest.approx(3.0 / math.sqrt(2.0), abs=1e-12)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_ag_forward_variant_hand_computed(impl):
    # dx: [1, 3, 0], [3, 1, 0]; dy: [2, 4, 2], [0, 0, 0]; sum of sqrt((dx^2 + dy^2) / 2) over (2 - 1)(3 - 1)
    total = sum(math.sqrt(v / 2.0) for v in (1 + 4, 9 + 16, 0 + 4, 9 + 0, 1 + 0, 0))
    assert impl.average_gradient_forward(SMALL) == pytest.approx(total / 2.0, abs=1e-12)


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_mi_hand_computed_in_nats(impl):
    f = np.array([[0.0, 0.0, 0.0, 1.0]])
    a = np.array([[0.0, 0.0, 1.0, 1.0]])
    # joint p: (0,0) 1/2, (0,1) 1/4, (1,1) 1/4; marginals F (3/4, 1/4), A (1/2, 1/2)
    expected = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2.0)
    assert impl.mutual_information(f, a) == pytest.approx(expected, abs=1e-12)
    assert impl.mutual_information(a, a) == pytest.approx(math.log(2.0), abs=1e-12)
    assert impl.mutual_information(a, np.array([[0.0, 1.0, 0.0, 1.0]])) == pytest.approx(0.0, abs=1e-15)
    assert impl.mutual_information(np.full((3, 3), 5.0), texture((3, 3))) == 0.0  # constant image: MI 0
    # the values present are the bins: 0 and 0.4 stay apart (a 256-level histogram would merge them)
    assert impl.mutual_information(np.array([[0.0, 0.4, 0.0, 0.4]]), np.array([[1.0, 2.0, 1.0, 2.0]])) == (
        pytest.approx(math.log(2.0), abs=1e-12)
    )


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_mse_and_psnr_hand_computed(impl):
    f = np.array([[10.0, 20.0]])
    a = np.array([[10.0, 20.0]])
    b = np.array([[20.0, 10.0]])
    assert impl.mse(a, f) == 0.0 and impl.mse(b, f) == 100.0
    # combined MSE (0 + 100) / 2 = 50; peak = max(F) = 20
    assert impl.psnr(f, a, b) == pytest.approx(10 * math.log10(400 / 50), abs=1e-12)
    assert impl.psnr(f, a, b, peak=255.0) == pytest.approx(10 * math.log10(255**2 / 50), abs=1e-12)
    assert impl.psnr(f, f, f) == math.inf  # MSE 0
    assert impl.psnr(np.zeros((1, 2)), a, b) == -math.inf  # black fused image, MSE > 0


@pytest.mark.parametrize("impl", IMPLS, ids=IDS)
def test_scd_hand_computed(impl):
    a = np.array([[0.0, 0.0, 1.0, 1.0]])
    b = np.array([[0.0, 1.0, 0.0, 1.0]])
    # F = 2A: r(A, 2A - B) = 2 / sqrt(5) (centred 2A - B = [-.5, -1.5, 1.5, .5]); r(B, F - A = A) = 0
    assert impl.scd(2 * a, a, b) == pytest.approx(2 / math.sqrt(5.0), abs=1e-12)
    assert impl.scd(a + b, a, b) == pytest.approx(2.0, abs=1e-12)  # F - B = A and F - A = B
    assert math.isnan(impl.scd(b, a, b))  # F - B is constant: correlation undefined


@pytest.mark.parametrize("impl", ["fast", "direct"])
def test_constant_and_identical_images_give_documented_values(impl):
    x = texture((24, 24), seed=11)
    flat = np.full((24, 24), 80.0)
    got = fusion_metrics(flat, x, texture((24, 24), seed=12), impl=impl, metrics="all")
    assert list(got) == list(ALL_METRICS)
    assert got["SD"] == 0.0 and got["AG"] == 0.0 and got["MI"] == 0.0 and got["EN"] == 0.0
    assert math.isnan(got["CC"]) and math.isfinite(got["SCD"]) and math.isfinite(got["PSNR"])
    same = fusion_metrics(x, x, x, impl=impl, metrics="MSE,PSNR,SCD,MI")
    assert same["MSE"] == 0.0 and same["PSNR"] == math.inf and math.isnan(same["SCD"])
    assert same["MI"] == pytest.approx(2 * direct.mutual_information(x, x), abs=1e-12)


def test_metric_selection_and_errors():
    x, y, z = texture(seed=1), texture(seed=2), texture(seed=3)
    assert list(fusion_metrics(x, y, z)) == ["EN", "SF", "CC", "VIF", "Qabf", "SSIM"]  # the default: Table I
    assert list(fusion_metrics(x, y, z, metrics="psnr,en,PSNR")) == ["PSNR", "EN"]  # any case, order kept, no repeats
    variants = fusion_metrics(x, y, z, metrics=["MI", "MI_bits", "PSNR", "PSNR_255"])
    assert variants["MI_bits"] == pytest.approx(variants["MI"] / math.log(2.0), rel=1e-14)
    peak = float(x.max())
    assert variants["PSNR_255"] - variants["PSNR"] == pytest.approx(20 * math.log10(255.0 / peak), abs=1e-9)
    with pytest.raises(ValueError, match="unknown metric 'FMI'.*EN, SD"):
        fusion_metrics(x, y, z, metrics="EN,FMI")
    assert catalog.lower_is_better(ALL_METRICS) == ["MSE"]
    assert catalog.parse_metrics("ALL") == ALL_METRICS


def test_new_metrics_direct_equals_fast_on_awkward_inputs():
    a = texture(seed=21)
    b = texture(seed=22)
    b[:, 20:] = 0.0
    f = np.round(0.5 * a + 0.5 * b)
    # the new metrics only: Qabf's equality tests need integer images to agree exactly (docs/METRICS.md)
    names = [k for k in (*ALL_METRICS, *catalog.VARIANTS) if k not in catalog.TABLE1_METRICS]
    for fused in (f, f + 0.25, np.clip(f * 1.7, 0, 400)):  # integers; fractions and > 255: MI's general path
        want = direct.fusion_metrics(fused, a, b, metrics=names)
        got = fast.fusion_metrics(fused, a, b, metrics=names)
        for key in names:
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key


def _evaluator_style(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The published evaluator's arithmetic: float32 images, numpy reductions in float32 (our own formulas)."""
    f, a, b = (x.astype(np.float32) for x in (f, a, b))
    g_rows, g_cols = np.gradient(f)

    def r(x: np.ndarray, y: np.ndarray) -> float:
        dx, dy = x - np.mean(x), y - np.mean(y)
        return np.sum(dx * dy) / np.sqrt(np.sum(dx**2) * np.sum(dy**2))

    error = (np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2
    return {
        "SD": np.std(f),
        "AG": np.mean(np.sqrt((g_cols**2 + g_rows**2) / 2)),
        "MSE": error,
        "PSNR": 10 * np.log10(np.max(f) ** 2 / error),
        "SCD": r(a, f - b) + r(b, f - a),
    }


@pytest.mark.parametrize("dataset,name", REAL_PAIRS)
def test_new_metrics_match_the_community_evaluator_on_real_pairs(shared_data, dataset, name):
    mutual_info_score = pytest.importorskip("sklearn.metrics").mutual_info_score
    ir = read_gray(shared_data / dataset / "ir" / f"{name}.png")
    vi = read_gray(shared_data / dataset / "vi" / f"{name}.png")
    fused = np.clip(np.round(0.6 * ir + 0.4 * vi + np.random.default_rng(1).normal(0, 6, ir.shape)), 0, 255)
    got = fast.fusion_metrics(fused, ir, vi, metrics="all")
    want = direct.fusion_metrics(fused, ir, vi, metrics="all")
    for key in ALL_METRICS:
        assert got[key] == pytest.approx(want[key], rel=1e-10), key
    f32, a32, b32 = (x.astype(np.float32).ravel() for x in (fused, ir, vi))
    sk_mi = mutual_info_score(f32, a32) + mutual_info_score(f32, b32)  # labels = the grey values present
    assert got["MI"] == pytest.approx(sk_mi, abs=1e-10)
    assert direct.mutual_information(fused, ir) == pytest.approx(mutual_info_score(f32, a32), abs=1e-12)
    for key, value in _evaluator_style(fused, ir, vi).items():
        assert got[key] == pytest.approx(float(value), rel=2e-6), key  # float32 accumulation in the evaluator


def test_bench_script_needs_data_and_runs_on_a_tiny_set(tmp_path, capsys):
    from scripts import bench_metrics

    assert bench_metrics.main(["--data", str(tmp_path), "--pairs", "1"]) == 2
    err = capsys.readouterr().err
    assert "no image folders at" in err and "--data DIR" in err and "Traceback" not in err
    for side, seed in (("ir", 1), ("vi", 2)):
        (tmp_path / "MSRS" / side).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "MSRS" / side / "p.png"), texture((24, 32), seed=seed).astype(np.uint8))
    assert bench_metrics.main(["--data", str(tmp_path), "--pairs", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("metrics: direct") and "max rel diff" in out[-1]
    assert any(line.split()[:1] == ["SCD"] for line in out)  # the per-metric table covers the new metrics
