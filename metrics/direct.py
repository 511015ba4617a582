"""Direct fusion metrics, written line by line from the definitions in docs/METRICS.md.

Every filter is a plain 2-D convolution (``scipy.signal.convolve2d``), every clamp a masked assignment in the
order the definition lists it. This module is the yardstick for :mod:`metrics.fast` and is used by the tests and
the benchmark; it needs about a second and a half per 640x480 pair, almost all of it in VIF.

All images are 2-D float arrays (H, W) with gray values in [0, 255] (integer-valued when read with
:func:`data.io.read_gray_0_255_metric_convention`); results are Python floats. Metric names and directions are in
:mod:`metrics.catalog`, the definitions with their sources in ``docs/METRICS.md``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .catalog import parse_metrics
from .conventions import Convention, combine

VIF_SIGMA_NSQ = 2.0
VIF_EPS = 1e-10
SSIM_WIN = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03

def convolve2d(image: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    """``scipy.signal.convolve2d``, imported on first use: only this reference path needs scipy.signal, whose import
    costs about 0.7 s of every ``eval_metrics.py`` start (the default fast path never calls it)."""
    from scipy.signal import convolve2d as scipy_convolve2d

    return scipy_convolve2d(image, kernel, mode=mode)


# Sobel kernels as the published evaluator writes them; convolve2d flips them (true convolution).
SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])

# Xydeas-Petrovic sigmoid constants: (T, k, D) for the gradient-strength and the orientation terms.
QABF_G = (0.9994, -15.0, 0.5)
QABF_A = (0.9879, -22.0, 0.8)


def _as_float(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D gray image, got shape {img.shape}")
    return img


def entropy(fused: np.ndarray) -> float:
    """EN: Shannon entropy in bits of the 256-bin histogram of ``uint8(round(F))``.

    Args:
        fused: (H, W) gray values in [0, 255]; values outside are clipped before the cast.

    Returns:
        Entropy in [0, 8] bits.
    """
    levels = np.clip(np.round(_as_float(fused)), 0, 255).astype(np.uint8).ravel()
    prob = np.bincount(levels, minlength=256) / levels.size
    prob = prob[prob > 0]
    return float(-np.sum(prob * np.log2(prob)) + 0.0)


def spatial_frequency(fused: np.ndarray) -> float:
    """SF: ``sqrt(mean(horizontal differences^2) + mean(vertical differences^2))``.

    Args:
        fused: (H, W) with H, W >= 2.
    """
    f = _as_float(fused)
    row_freq = np.mean((f[:, 1:] - f[:, :-1]) ** 2)
    col_freq = np.mean((f[1:, :] - f[:-1, :]) ** 2)
    return float(np.sqrt(row_freq + col_freq))


def correlation(source: np.ndarray, fused: np.ndarray) -> float:
    """Pearson correlation r(source, fused); NaN when either image is constant.

    Args:
        source, fused: (H, W) arrays of the same shape.

    Returns:
        r in [-1, 1], or NaN.
    """
    a = _as_float(source)
    f = _as_float(fused)
    da = a - a.mean()
    df = f - f.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(da * df) / np.sqrt(np.sum(da**2) * np.sum(df**2)))


def standard_deviation(fused: np.ndarray) -> float:
    """SD: population standard deviation of F (ddof 0), in grey levels.

    Args:
        fused: (H, W) in [0, 255].
    """
    return float(np.std(_as_float(fused)))


def average_gradient(fused: np.ndarray) -> float:
    """AG: mean over all pixels of sqrt((Gx^2 + Gy^2) / 2).

    Gx and Gy follow ``numpy.gradient``: central differences (f[i+1] - f[i-1]) / 2 inside the image, one-sided
    differences f[1] - f[0] and f[-1] - f[-2] on the border rows and columns.

    Args:
        fused: (H, W) with H, W >= 2.
    """
    g_rows, g_cols = np.gradient(_as_float(fused))
    return float(np.mean(np.sqrt((g_cols**2 + g_rows**2) / 2.0)))


def average_gradient_forward(fused: np.ndarray) -> float:
    """AG_fwd, the MATLAB-toolbox form: forward differences, sum of sqrt((dx^2 + dy^2) / 2) over (H - 1)(W - 1).

    dx = f[i, j+1] - f[i, j] and dy = f[i+1, j] - f[i, j], each 0 where the neighbour is outside the image; the sum
    runs over all H W pixels but is divided by (H - 1)(W - 1).

    Args:
        fused: (H, W) with H, W >= 2.
    """
    f = _as_float(fused)
    dx = np.zeros_like(f)
    dy = np.zeros_like(f)
    dx[:, :-1] = f[:, 1:] - f[:, :-1]
    dy[:-1, :] = f[1:, :] - f[:-1, :]
    h, w = f.shape
    return float(np.sum(np.sqrt((dx**2 + dy**2) / 2.0)) / ((h - 1) * (w - 1)))


def mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """Mutual information of the grey values of two images, in nats (natural logarithm).

    The joint distribution counts the pairs of values that occur (each distinct value is its own bin, no binning),
    as ``sklearn.metrics.mutual_info_score`` does with the flattened images as labels.

    Args:
        x, y: (H, W) arrays of the same shape, any values.

    Returns:
        MI >= 0; 0 when either image is constant.
    """
    _, ix = np.unique(_as_float(x).ravel(), return_inverse=True)
    _, iy = np.unique(_as_float(y).ravel(), return_inverse=True)
    n = ix.size
    ny = int(iy.max()) + 1
    cells, counts = np.unique(ix * ny + iy, return_counts=True)
    p_xy = counts / n
    p_x = np.bincount(ix) / n
    p_y = np.bincount(iy) / n
    mi = np.sum(p_xy * np.log(p_xy / (p_x[cells // ny] * p_y[cells % ny])))
    return float(max(mi, 0.0))  # >= 0 in exact arithmetic; round-off can leave -1e-17


def mse(source: np.ndarray, fused: np.ndarray) -> float:
    """Mean squared error mean((source - fused)^2).

    Args:
        source, fused: (H, W) arrays of the same shape.
    """
    return float(np.mean((_as_float(source) - _as_float(fused)) ** 2))


def psnr(fused: np.ndarray, source_a: np.ndarray, source_b: np.ndarray, peak: float | None = None) -> float:
    """PSNR = 10 log10(peak^2 / MSE), MSE the mean of MSE(A, F) and MSE(B, F).

    Args:
        fused, source_a, source_b: (H, W) in [0, 255].
        peak: None for the fused image's maximum (the community evaluator), or a fixed peak such as 255.

    Returns:
        dB; +inf when MSE is 0 (F equals both sources), -inf when the peak is 0 and MSE is not.
    """
    error = (mse(source_a, fused) + mse(source_b, fused)) / 2.0
    top = float(np.max(_as_float(fused))) if peak is None else float(peak)
    if error == 0.0:
        return math.inf
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(np.float64(top) ** 2 / error))


def scd(fused: np.ndarray, source_a: np.ndarray, source_b: np.ndarray) -> float:
    """SCD, the sum of the correlations of differences: r(A, F - B) + r(B, F - A).

    F - B is roughly what the fused image took from A (and F - A what it took from B).

    Args:
        fused, source_a, source_b: (H, W) arrays of the same shape.

    Returns:
        A value in [-2, 2]; NaN when a source or a difference image is constant.
    """
    f = _as_float(fused)
    a = _as_float(source_a)
    b = _as_float(source_b)
    return correlation(a, f - b) + correlation(b, f - a)


def vif_window(size: int) -> np.ndarray:
    """Normalised 2-D Gaussian window of ``size`` x ``size`` with sigma = size / 5, MATLAB ``fspecial`` style.

    Returns:
        (size, size) float64 array summing to 1.
    """
    half = (size - 1) / 2.0
    sigma = size / 5.0
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    win = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    win[win < np.finfo(win.dtype).eps * win.max()] = 0.0
    return win / win.sum()


def _filter_valid(img: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Correlation with ``win`` over the positions where it fits entirely (MATLAB ``filter2(win, img, 'valid')``)."""
    out_shape = (img.shape[0] - win.shape[0] + 1, img.shape[1] - win.shape[1] + 1)
    if min(out_shape) < 1:
        return np.zeros((max(out_shape[0], 0), max(out_shape[1], 0)))
    return convolve2d(img, np.rot90(win, 2), mode="valid")


def vif_scale_terms(
    sigma_ref: np.ndarray, sigma_dist: np.ndarray, sigma_cross: np.ndarray
) -> tuple[float, float]:
    """Numerator and denominator sums of one VIF scale, applying the clamps in the order docs/METRICS.md lists them.

    Args:
        sigma_ref: local variance of the reference, any shape.
        sigma_dist: local variance of the distorted image, same shape.
        sigma_cross: local covariance, same shape.

    Returns:
        ``(sum log10(1 + g^2 s_r / (s_v + s_n^2)), sum log10(1 + s_r / s_n^2))``.
    """
    eps = VIF_EPS
    s_r = sigma_ref.copy()
    s_d = sigma_dist
    g = sigma_cross / (s_r + eps)
    s_v = s_d - g * sigma_cross

    low_r = s_r < eps
    g[low_r] = 0.0
    s_v[low_r] = s_d[low_r]
    s_r[low_r] = 0.0

    low_d = s_d < eps
    g[low_d] = 0.0
    s_v[low_d] = 0.0

    negative = g < 0
    s_v[negative] = s_d[negative]
    g[negative] = 0.0

    s_v[s_v < eps] = eps

    num = np.sum(np.log10(1.0 + g * g * s_r / (s_v + VIF_SIGMA_NSQ)))
    den = np.sum(np.log10(1.0 + s_r / VIF_SIGMA_NSQ))
    return float(num), float(den)


def vif(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Pixel-domain multiscale VIF (VIFP) of ``distorted`` against ``reference``.

    Four scales; at scale s a Gaussian window of size 2^(5-s)+1 (17, 9, 5, 3). For s > 1 both images are first
    filtered with it ('valid') and decimated by 2. NaN (e.g. a constant reference) counts as 1.

    Args:
        reference: (H, W) source image in [0, 255].
        distorted: (H, W) fused image in [0, 255].

    Returns:
        VIF, usually in [0, 1] (can exceed 1 for contrast-enhanced images).
    """
    ref = _as_float(reference)
    dist = _as_float(distorted)
    num = den = 0.0
    for scale in range(1, 5):
        win = vif_window(2 ** (4 - scale + 1) + 1)
        if scale > 1:
            ref = _filter_valid(ref, win)[::2, ::2]
            dist = _filter_valid(dist, win)[::2, ::2]
        mu_r = _filter_valid(ref, win)
        mu_d = _filter_valid(dist, win)
        sigma_r = _filter_valid(ref * ref, win) - mu_r * mu_r
        sigma_d = _filter_valid(dist * dist, win) - mu_d * mu_d
        sigma_rd = _filter_valid(ref * dist, win) - mu_r * mu_d
        n, d = vif_scale_terms(sigma_r, sigma_d, sigma_rd)
        num += n
        den += d
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.float64(num) / np.float64(den)
    return 1.0 if np.isnan(value) else float(value)


def sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel responses (Sx, Sy) by 'same' 2-D convolution with zero padding, as the published evaluator does.

    Returns:
        Two (H, W) arrays; Sx is left minus right, Sy is bottom minus top (after the kernel flip).
    """
    f = _as_float(img)
    return convolve2d(f, SOBEL_X, mode="same"), convolve2d(f, SOBEL_Y, mode="same")


def gradient_strength_orientation(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength g = sqrt(Sx^2 + Sy^2) and orientation alpha = arctan(Sy / Sx), pi/2 where Sx == 0.

    Returns:
        g (H, W) >= 0 and alpha (H, W) in [-pi/2, pi/2].
    """
    sx, sy = sobel(img)
    g = np.sqrt(sx * sx + sy * sy)
    alpha = np.zeros_like(g)
    zero = sx == 0
    alpha[zero] = math.pi / 2
    alpha[~zero] = np.arctan(sy[~zero] / sx[~zero])
    return g, alpha


def edge_preservation(
    g_src: np.ndarray, a_src: np.ndarray, g_fused: np.ndarray, a_fused: np.ndarray
) -> np.ndarray:
    """Per-pixel edge preservation Q^{XF} = Q_g Q_alpha of a source X in the fused image.

    G is the ratio of the smaller to the larger edge strength, except where the strengths are equal: there the
    published evaluator stores g_F instead of 1, and so do we.

    Returns:
        (H, W) array in [0, 1).
    """
    ratio = np.zeros_like(g_src)
    larger = g_src > g_fused
    ratio[larger] = g_fused[larger] / g_src[larger]
    equal = g_src == g_fused
    ratio[equal] = g_fused[equal]
    smaller = g_src < g_fused
    ratio[smaller] = g_src[smaller] / g_fused[smaller]
    orient = 1.0 - np.abs(a_src - a_fused) / (math.pi / 2)
    t_g, k_g, d_g = QABF_G
    t_a, k_a, d_a = QABF_A
    q_g = t_g / (1.0 + np.exp(k_g * (ratio - d_g)))
    q_a = t_a / (1.0 + np.exp(k_a * (orient - d_a)))
    return q_g * q_a


def qabf(source_a: np.ndarray, source_b: np.ndarray, fused: np.ndarray) -> float:
    """Xydeas-Petrovic Q^{AB/F}: edge preservation of both sources, weighted by their edge strengths.

    Args:
        source_a, source_b, fused: (H, W) in [0, 255].

    Returns:
        Qabf in [0, 1); NaN when neither source has an edge.
    """
    g_a, a_a = gradient_strength_orientation(source_a)
    g_b, a_b = gradient_strength_orientation(source_b)
    g_f, a_f = gradient_strength_orientation(fused)
    q_af = edge_preservation(g_a, a_a, g_f, a_f)
    q_bf = edge_preservation(g_b, a_b, g_f, a_f)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(q_af * g_a + q_bf * g_b) / np.sum(g_a + g_b))


def ssim(img_x: np.ndarray, img_y: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM with a 7x7 uniform window, K1 = 0.01, K2 = 0.03 and sample (N / (N - 1)) covariances.

    The mean runs over the positions where the window fits (a 3-pixel border excluded), which is what
    scikit-image's ``structural_similarity(..., win_size=7, use_sample_covariance=True)`` averages.

    Args:
        img_x, img_y: (H, W) arrays with H, W >= 7.
        data_range: L in C1 = (K1 L)^2, C2 = (K2 L)^2; 255 for 8-bit data (2 in the ``cddfuse`` convention).

    Returns:
        SSIM in [-1, 1].
    """
    x = _as_float(img_x)
    y = _as_float(img_y)
    if min(x.shape) < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN}, got {x.shape}")
    n = SSIM_WIN * SSIM_WIN
    win = np.full((SSIM_WIN, SSIM_WIN), 1.0 / n)
    cov_norm = n / (n - 1.0)
    mu_x = _filter_valid(x, win)
    mu_y = _filter_valid(y, win)
    var_x = cov_norm * (_filter_valid(x * x, win) - mu_x * mu_x)
    var_y = cov_norm * (_filter_valid(y * y, win) - mu_y * mu_y)
    cov_xy = cov_norm * (_filter_valid(x * y, win) - mu_x * mu_y)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(s_map.mean())


def fusion_metrics(
    fused: np.ndarray,
    ir: np.ndarray,
    vi: np.ndarray,
    convention: Convention | str = Convention.PAPER,
    metrics: str | Sequence[str] | None = None,
) -> dict[str, float]:
    """Fusion metrics of one fused image, combining the sources as ``convention`` says.

    Args:
        fused: (H, W) fused gray image in [0, 255].
        ir: (H, W) infrared source (A).
        vi: (H, W) visible source (B).
        convention: ``paper``, ``cddfuse`` or ``tdfusion`` (see :mod:`metrics.conventions`); it changes CC, VIF
            and SSIM only.
        metrics: names (see :mod:`metrics.catalog`), ``"all"``, or None for the six of Table I.

    Returns:
        metric name -> float, in the order asked for.
    """
    names = parse_metrics(metrics)
    conv = Convention.parse(convention)
    check_shapes(fused, ir, vi)

    def combined_mse() -> float:
        return (mse(ir, fused) + mse(vi, fused)) / 2.0

    formulas = {
        "EN": lambda: entropy(fused),
        "SD": lambda: standard_deviation(fused),
        "SF": lambda: spatial_frequency(fused),
        "AG": lambda: average_gradient(fused),
        "MI": lambda: mutual_information(fused, ir) + mutual_information(fused, vi),
        "MSE": combined_mse,
        "CC": lambda: combine(correlation(ir, fused), correlation(vi, fused), conv.cc_rule),
        "PSNR": lambda: psnr(fused, ir, vi),
        "SCD": lambda: scd(fused, ir, vi),
        "VIF": lambda: combine(vif(ir, fused), vif(vi, fused), conv.vif_rule),
        "Qabf": lambda: qabf(ir, vi, fused),
        "SSIM": lambda: combine(
            ssim(fused, ir, conv.ssim_data_range), ssim(fused, vi, conv.ssim_data_range), conv.ssim_rule
        ),
        "AG_fwd": lambda: average_gradient_forward(fused),
        "MI_bits": lambda: (mutual_information(fused, ir) + mutual_information(fused, vi)) / math.log(2.0),
        "PSNR_255": lambda: psnr(fused, ir, vi, peak=255.0),
    }
    return {name: formulas[name]() for name in names}


def check_shapes(fused: np.ndarray, ir: np.ndarray, vi: np.ndarray) -> None:
    """Raise ``ValueError`` unless the three images are 2-D, of one shape, and at least 7x7 (SSIM's window)."""
    shapes = {np.shape(fused), np.shape(ir), np.shape(vi)}
    if len(shapes) != 1:
        raise ValueError(f"shapes differ: fused {np.shape(fused)}, ir {np.shape(ir)}, vi {np.shape(vi)}")
    shape = shapes.pop()
    if len(shape) != 2:
        raise ValueError(f"expected 2-D gray images, got shape {shape}")
    if min(shape) < SSIM_WIN:
        raise ValueError(f"images must be at least {SSIM_WIN}x{SSIM_WIN}, got {shape[1]}x{shape[0]} (WxH)")
