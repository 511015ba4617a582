"""Fast fusion metrics: the numbers of :mod:`metrics.direct` (to about 1e-12), by exact reformulations only.

- VIF: every Gaussian window is the outer product of a normalised 1-D Gaussian with itself, so each 'valid'
  2-D filter is two 1-D passes (OpenCV ``sepFilter2D`` in float64, cropped to the 'valid' part). The fused
  image's pyramid, local means and second moments are computed once and shared by both sources.
- SSIM: the 7x7 uniform window is a box filter (``cv2.boxFilter``, float64); the fused image's moments are shared.
- Qabf: the Sobel kernels are separable ([1, 2, 1] x [-1, 0, 1]); the 'same' convolution with zero padding is
  written as shifted sums of a padded array, which is integer-exact, and the per-pixel rules are vectorised.
- CC, SF, SD, MSE, SCD: sums of products (``einsum``) of differences held in reused buffers, no squared
  temporaries; the fused image's centred copy is shared by SD, CC and SCD, and MSE feeds PSNR.
- AG: the differences of ``numpy.gradient`` written into two buffers, then the per-pixel root in row blocks.
- MI: for integer images in [0, 255] (what the reading convention gives) the joint distribution of the values
  present is a 256 x 256 ``bincount``, and MI = H(F) + H(X) - H(F, X) with H(F) shared by both sources; other
  inputs take the general path of :func:`metrics.direct.mutual_information`.
- EN as in the definition.

Two implementation choices matter as much as the arithmetic on 640x480 images. Per-pixel formulas run on blocks
of rows (about 16k pixels) so that their temporaries stay in cache, and full-size intermediates live in a
per-thread workspace of reusable buffers: freshly allocated multi-megabyte arrays page-fault on first touch, and
on a 640x480 pair those faults alone cost more than the filtering. The workspace keeps about twenty image-sized
float64 buffers per thread (about 50 MB at 640x480); :func:`release_workspace` frees them.

Images are 2-D float arrays (H, W) with values in [0, 255].
"""
from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import cv2
import numpy as np

from . import direct
from .catalog import parse_metrics
from .conventions import Convention, combine
from .direct import QABF_A, QABF_G, SSIM_K1, SSIM_K2, SSIM_WIN, VIF_EPS, VIF_SIGMA_NSQ, check_shapes, vif_window

__all__ = [
    "entropy",
    "standard_deviation",
    "spatial_frequency",
    "average_gradient",
    "average_gradient_forward",
    "mutual_information",
    "mse",
    "correlation",
    "psnr",
    "scd",
    "vif",
    "qabf",
    "ssim",
    "fusion_metrics",
    "release_workspace",
]

VIF_SCALES = (1, 2, 3, 4)
_BLOCK_ELEMENTS = 16384


def _gaussian_1d(size: int) -> np.ndarray:
    """1-D factor of :func:`metrics.direct.vif_window`; checks that the 2-D window really is its outer square."""
    half = (size - 1) / 2.0
    sigma = size / 5.0
    t = np.arange(size, dtype=np.float64) - half
    g = np.exp(-t * t / (2.0 * sigma * sigma))
    g /= g.sum()
    if not np.allclose(np.outer(g, g), vif_window(size), rtol=0.0, atol=1e-15):
        raise AssertionError(f"the {size}x{size} VIF window is not separable (MATLAB eps truncation hit)")
    return g


_VIF_KERNELS = {scale: _gaussian_1d(2 ** (4 - scale + 1) + 1) for scale in VIF_SCALES}


class _Workspace(threading.local):
    """Named float64 scratch buffers, grown to the largest size requested and reused between calls."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, int], dtype: type = np.float64) -> np.ndarray:
        """A C-contiguous view of buffer ``name`` with ``shape`` and ``dtype``; its content is undefined."""
        size = shape[0] * shape[1]
        buf = self.buffers.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.empty(max(size, 1), dtype=dtype)
            self.buffers[name] = buf
        return buf[:size].reshape(shape)


_WS = _Workspace()


def release_workspace() -> None:
    """Free the scratch buffers of the calling thread (they are re-created on the next call)."""
    _WS.buffers.clear()


def _as_float(img: np.ndarray) -> np.ndarray:
    img = np.ascontiguousarray(img, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D gray image, got shape {img.shape}")
    return img


def _row_blocks(shape: tuple[int, ...]) -> list[slice]:
    """Row slices covering ``shape[0]`` with about ``_BLOCK_ELEMENTS`` elements each."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, shape[1]))
    return [slice(r, min(r + rows, shape[0])) for r in range(0, shape[0], rows)]


def _product(x: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
    return np.multiply(x, y, out=_WS.get(name, x.shape))


def _filter_valid(img: np.ndarray, kernel: np.ndarray, name: str) -> np.ndarray:
    """Separable correlation with ``outer(kernel, kernel)`` over the 'valid' positions, into buffer ``name``.

    Args:
        img: (H, W) float64, C-contiguous.
        kernel: (k,) odd-length symmetric 1-D kernel.
        name: workspace buffer that receives the full-size result (the returned array is a view of it).

    Returns:
        (H - k + 1, W - k + 1), empty when the window does not fit.
    """
    k = kernel.size
    h, w = img.shape
    if h < k or w < k:
        return np.zeros((max(h - k + 1, 0), max(w - k + 1, 0)))
    r = k // 2
    out = cv2.sepFilter2D(img, cv2.CV_64F, kernel, kernel, dst=_WS.get(name, img.shape), borderType=cv2.BORDER_CONSTANT)
    return out[r : h - r, r : w - r]


def _vif_scale_terms(
    mu_r: np.ndarray, sq_r: np.ndarray, mu_d: np.ndarray, s_d: np.ndarray, low_d: np.ndarray, cross: np.ndarray
) -> tuple[float, float]:
    """Vectorised form of :func:`metrics.direct.vif_scale_terms` from local moments (same clamps, same result).

    Args:
        mu_r, mu_d: local means of reference and distorted image, (h, w).
        sq_r: local mean of the reference's square, (h, w).
        s_d: local variance of the distorted image, (h, w); ``low_d`` = ``s_d < eps``.
        cross: local mean of the product of the two images, (h, w).

    Returns:
        ``(num, den)`` sums of this scale.
    """
    eps = VIF_EPS
    num = den = 0.0
    for rows in _row_blocks(mu_r.shape):
        m_r = mu_r[rows]
        s_r = np.subtract(sq_r[rows], m_r * m_r)
        s_rd = np.subtract(cross[rows], m_r * mu_d[rows])
        sd = s_d[rows]
        ld = low_d[rows]
        g = s_rd / (s_r + eps)
        s_v = np.subtract(sd, g * s_rd)
        low_r = s_r < eps
        # The sequential clamps of the definition reduce to: where g would be negative or s_r is tiny, g = 0 and
        # s_v = s_d; where s_d is tiny, g = 0 and s_v = 0 (this one wins); then s_v >= eps, and s_r = 0 if tiny.
        reset = np.less(g, 0.0)
        reset |= low_r
        np.copyto(s_v, sd, where=reset)
        reset |= ld
        np.copyto(g, 0.0, where=reset)
        np.copyto(s_v, 0.0, where=ld)
        np.maximum(s_v, eps, out=s_v)
        np.copyto(s_r, 0.0, where=low_r)
        s_v += VIF_SIGMA_NSQ
        g *= g
        g *= s_r
        g /= s_v
        g += 1.0
        num += float(np.sum(np.log10(g, out=g)))
        s_r /= VIF_SIGMA_NSQ
        s_r += 1.0
        den += float(np.sum(np.log10(s_r, out=s_r)))
    return num, den


def _pyramid_level(img: np.ndarray, kernel: np.ndarray, name: str) -> np.ndarray:
    """Next VIF scale: 'valid' filtering with ``kernel`` then ``[::2, ::2]``, copied into buffer ``name``."""
    filtered = _filter_valid(img, kernel, "pyr_filtered")[::2, ::2]
    out = _WS.get(name, filtered.shape)
    np.copyto(out, filtered)
    return out


def _vif_many(references: list[np.ndarray], distorted: np.ndarray) -> list[float]:
    """VIF of ``distorted`` against each reference, sharing the distorted image's pyramid and moments.

    Args:
        references: (H, W) source images in [0, 255], C-contiguous float64.
        distorted: (H, W) fused image in [0, 255], C-contiguous float64.

    Returns:
        One VIF per reference (NaN counts as 1).
    """
    nums = [0.0] * len(references)
    dens = [0.0] * len(references)
    dist = distorted
    refs = list(references)
    for scale in VIF_SCALES:
        kernel = _VIF_KERNELS[scale]
        if scale > 1:
            dist = _pyramid_level(dist, kernel, f"vif_d{scale}")
            refs = [_pyramid_level(ref, kernel, f"vif_r{i}_{scale}") for i, ref in enumerate(refs)]
        mu_d = _filter_valid(dist, kernel, "vif_mu_d")
        if mu_d.size == 0:
            break
        sq_d = _filter_valid(_product(dist, dist, "vif_prod"), kernel, "vif_sq_d")
        s_d = np.subtract(sq_d, _product(mu_d, mu_d, "vif_s_d"), out=_WS.get("vif_s_d", mu_d.shape))
        low_d = np.less(s_d, VIF_EPS, out=_WS.get("vif_low_d", mu_d.shape, np.bool_))
        for i, ref in enumerate(refs):
            mu_r = _filter_valid(ref, kernel, "vif_mu_r")
            sq_r = _filter_valid(_product(ref, ref, "vif_prod"), kernel, "vif_sq_r")
            cross = _filter_valid(_product(ref, dist, "vif_prod"), kernel, "vif_cross")
            n, d = _vif_scale_terms(mu_r, sq_r, mu_d, s_d, low_d, cross)
            nums[i] += n
            dens[i] += d
    values = []
    for num, den in zip(nums, dens, strict=True):
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.float64(num) / np.float64(den)
        values.append(1.0 if np.isnan(value) else float(value))
    return values


def vif(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Multiscale pixel-domain VIF, as :func:`metrics.direct.vif`.

    Args:
        reference: (H, W) source in [0, 255].
        distorted: (H, W) fused image in [0, 255].
    """
    return _vif_many([_as_float(reference)], _as_float(distorted))[0]


def _gradients(img: np.ndarray, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength g and orientation alpha of a whole image, into workspace buffers.

    Sx and Sy equal ``convolve2d(img, SOBEL_X / SOBEL_Y, 'same')`` with zero fill (``cv2.Sobel`` correlates, so Sx
    takes ``scale=-1``: left minus right; Sy is bottom minus top); with integer-valued images every step up to g is
    exact. alpha = arctan(Sy / Sx), and pi/2 where Sx == 0.

    Returns:
        g (H, W) >= 0 and alpha (H, W) in [-pi/2, pi/2].
    """
    border = cv2.BORDER_CONSTANT
    sx = cv2.Sobel(img, cv2.CV_64F, 1, 0, dst=_WS.get("qabf_sx", img.shape), ksize=3, scale=-1, borderType=border)
    sy = cv2.Sobel(img, cv2.CV_64F, 0, 1, dst=_WS.get("qabf_sy", img.shape), ksize=3, borderType=border)
    g = cv2.magnitude(sx, sy, _WS.get(f"qabf_g{tag}", img.shape))
    alpha = _WS.get(f"qabf_alpha{tag}", img.shape)
    for rows in _row_blocks(img.shape):
        x = sx[rows]
        zero = x == 0
        np.copyto(x, 1.0, where=zero)
        out = np.divide(sy[rows], x, out=alpha[rows])
        np.arctan(out, out=out)
        np.copyto(out, math.pi / 2, where=zero)
    return g, alpha


def _weighted_preservation(g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> float:
    """Sum over pixels of Q^{XF} g_X, as :func:`metrics.direct.edge_preservation` (G = g_F where g_X == g_F).

    Q = T_g / (1 + exp(k_g (G - D_g))) * T_a / (1 + exp(k_a (A - D_a))) with A = 1 - |alpha_X - alpha_F| / (pi/2),
    evaluated block by block with the constants folded: k_a (A - D_a) = k_a (1 - D_a) - (2 k_a / pi) |d alpha|.
    """
    t_g, k_g, d_g = QABF_G
    t_a, k_a, d_a = QABF_A
    total = 0.0
    for rows in _row_blocks(g_src.shape):
        gs, gf = g_src[rows], g_f[rows]
        equal = gs == gf
        hi = np.maximum(gs, gf)
        np.copyto(hi, 1.0, where=equal)  # also avoids 0 / 0 where both strengths vanish
        ratio = np.minimum(gs, gf)
        ratio /= hi
        np.copyto(ratio, gf, where=equal)
        ratio *= k_g
        ratio -= k_g * d_g
        np.exp(ratio, out=ratio)
        ratio += 1.0
        orient = np.subtract(a_src[rows], a_f[rows])
        np.abs(orient, out=orient)
        orient *= -k_a / (math.pi / 2)
        orient += k_a * (1.0 - d_a)
        np.exp(orient, out=orient)
        orient += 1.0
        ratio *= orient
        total += float(np.sum(np.divide(gs, ratio, out=ratio)))
    return t_g * t_a * total


def qabf(source_a: np.ndarray, source_b: np.ndarray, fused: np.ndarray) -> float:
    """Xydeas-Petrovic Q^{AB/F}, as :func:`metrics.direct.qabf` (published-evaluator quirk included).

    Args:
        source_a, source_b, fused: (H, W) in [0, 255].

    Returns:
        Qabf in [0, 1); NaN when neither source has an edge.
    """
    g_f, a_f = _gradients(_as_float(fused), "f")
    num = den = 0.0
    for img in (source_a, source_b):
        g_s, a_s = _gradients(_as_float(img), "s")
        num += _weighted_preservation(g_s, a_s, g_f, a_f)
        den += float(np.sum(g_s))
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(num) / np.float64(den))


def _box_valid(img: np.ndarray, name: str) -> np.ndarray:
    """Mean over the 7x7 window at every position where it fits: (H - 6, W - 6), in buffer ``name``."""
    r = SSIM_WIN // 2
    out = cv2.boxFilter(
        img, cv2.CV_64F, (SSIM_WIN, SSIM_WIN), dst=_WS.get(name, img.shape), normalize=True,
        borderType=cv2.BORDER_CONSTANT,
    )
    return out[r : img.shape[0] - r, r : img.shape[1] - r]


def _ssim_many(images: list[np.ndarray], other: np.ndarray, data_range: float) -> list[float]:
    """SSIM(other, x) for every x in ``images``, sharing ``other``'s local moments; see :func:`ssim`.

    With cn = N / (N - 1), S = (2 mu_x mu_y + C1) (2 cn (E[xy] - mu_x mu_y) + C2)
    / ((mu_x^2 + [mu_y^2 + C1]) (cn (E[x^2] - mu_x^2) + [cn var_y + C2])); the bracketed terms depend on ``other``
    alone and are computed once.
    """
    if min(other.shape) < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN}, got {other.shape}")
    n = SSIM_WIN * SSIM_WIN
    cov_norm = n / (n - 1.0)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mean_y = _box_valid(other, "ssim_mu_y")
    square_y = _box_valid(_product(other, other, "ssim_prod"), "ssim_sq_y")
    lum_y = np.multiply(mean_y, mean_y, out=_WS.get("ssim_lum_y", mean_y.shape))  # mu_y^2 + C1
    np.subtract(square_y, lum_y, out=square_y)
    square_y *= cov_norm
    square_y += c2  # now cn var_y + C2
    lum_y += c1
    values = []
    for img in images:
        mean_x = _box_valid(img, "ssim_mu_x")
        square_x = _box_valid(_product(img, img, "ssim_prod"), "ssim_sq_x")
        cross = _box_valid(_product(img, other, "ssim_prod"), "ssim_cross")
        total = 0.0
        for rows in _row_blocks(cross.shape):
            mu_x, mu_y = mean_x[rows], mean_y[rows]
            mxy = mu_x * mu_y
            mxx = mu_x * mu_x
            cov = np.subtract(cross[rows], mxy)
            cov *= 2.0 * cov_norm
            cov += c2
            mxy *= 2.0
            mxy += c1
            mxy *= cov  # numerator
            var_x = np.subtract(square_x[rows], mxx)
            var_x *= cov_norm
            var_x += square_y[rows]
            mxx += lum_y[rows]
            mxx *= var_x  # denominator
            total += float(np.sum(np.divide(mxy, mxx, out=mxy)))
        values.append(total / cross.size)
    return values


def ssim(img_x: np.ndarray, img_y: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM (7x7 uniform window, sample covariance, 3-pixel border excluded), as :func:`metrics.direct.ssim`.

    Args:
        img_x, img_y: (H, W) arrays with H, W >= 7.
        data_range: L in C1 = (K1 L)^2, C2 = (K2 L)^2.
    """
    return _ssim_many([_as_float(img_y)], _as_float(img_x), data_range)[0]


def entropy(fused: np.ndarray) -> float:
    """EN in bits of the 256-bin histogram of ``uint8(round(F))``, as :func:`metrics.direct.entropy`."""
    f = _as_float(fused)
    levels = np.round(f, out=_WS.get("en_levels", f.shape))
    np.clip(levels, 0, 255, out=levels)
    prob = np.bincount(levels.astype(np.uint8).ravel(), minlength=256) / levels.size
    prob = prob[prob > 0]
    return float(-np.sum(prob * np.log2(prob)) + 0.0)


def _sum_squares(x: np.ndarray) -> float:
    return float(np.einsum("ij,ij->", x, x))


def spatial_frequency(fused: np.ndarray) -> float:
    """SF, as :func:`metrics.direct.spatial_frequency`, without squared temporaries."""
    f = _as_float(fused)
    h, w = f.shape
    dx = np.subtract(f[:, 1:], f[:, :-1], out=_WS.get("sf_diff", (h, w - 1)))
    row_freq = _sum_squares(dx) / dx.size
    dy = np.subtract(f[1:, :], f[:-1, :], out=_WS.get("sf_diff", (h - 1, w)))
    col_freq = _sum_squares(dy) / dy.size
    return float(np.sqrt(row_freq + col_freq))


def _correlation_many(sources: list[np.ndarray], fused: np.ndarray) -> list[float]:
    """Pearson r(source, fused) for each source, sharing the centred fused image; NaN for a constant image."""
    df = np.subtract(fused, fused.mean(), out=_WS.get("cc_f", fused.shape))
    ss_f = _sum_squares(df)
    values = []
    for src in sources:
        da = np.subtract(src, src.mean(), out=_WS.get("cc_src", src.shape))
        with np.errstate(invalid="ignore", divide="ignore"):
            values.append(float(np.float64(np.einsum("ij,ij->", da, df)) / np.sqrt(_sum_squares(da) * ss_f)))
    return values


def correlation(source: np.ndarray, fused: np.ndarray) -> float:
    """Pearson r(source, fused), as :func:`metrics.direct.correlation`; NaN when either image is constant."""
    return _correlation_many([_as_float(source)], _as_float(fused))[0]


def _centred(img: np.ndarray, name: str) -> np.ndarray:
    """``img - mean(img)`` in workspace buffer ``name``."""
    return np.subtract(img, img.mean(), out=_WS.get(name, img.shape))


def standard_deviation(fused: np.ndarray) -> float:
    """SD (ddof 0), as :func:`metrics.direct.standard_deviation`."""
    f = _as_float(fused)
    return math.sqrt(_sum_squares(_centred(f, "sd_f")) / f.size)


def _gradient_root_mean(gx: np.ndarray, gy: np.ndarray) -> float:
    """Sum over pixels of sqrt((gx^2 + gy^2) / 2), block by block (the buffers are overwritten)."""
    total = 0.0
    for rows in _row_blocks(gx.shape):
        x, y = gx[rows], gy[rows]
        x *= x
        y *= y
        x += y
        x *= 0.5
        total += float(np.sum(np.sqrt(x, out=x)))
    return total


def _gradient_buffers(fused: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image as float and two reused (H, W) buffers for its differences; H, W >= 2."""
    f = _as_float(fused)
    h, w = f.shape
    if h < 2 or w < 2:
        raise ValueError(f"AG needs at least 2x2 pixels, got {w}x{h}")
    return f, _WS.get("ag_x", f.shape), _WS.get("ag_y", f.shape)


def average_gradient(fused: np.ndarray) -> float:
    """AG, as :func:`metrics.direct.average_gradient` (``numpy.gradient``'s differences, written into buffers).

    Args:
        fused: (H, W) with H, W >= 2.
    """
    f, gx, gy = _gradient_buffers(fused)
    np.subtract(f[:, 2:], f[:, :-2], out=gx[:, 1:-1])
    gx[:, 1:-1] *= 0.5
    np.subtract(f[:, 1], f[:, 0], out=gx[:, 0])
    np.subtract(f[:, -1], f[:, -2], out=gx[:, -1])
    np.subtract(f[2:, :], f[:-2, :], out=gy[1:-1, :])
    gy[1:-1, :] *= 0.5
    np.subtract(f[1, :], f[0, :], out=gy[0, :])
    np.subtract(f[-1, :], f[-2, :], out=gy[-1, :])
    return _gradient_root_mean(gx, gy) / f.size


def average_gradient_forward(fused: np.ndarray) -> float:
    """AG_fwd, as :func:`metrics.direct.average_gradient_forward`.

    Args:
        fused: (H, W) with H, W >= 2.
    """
    f, gx, gy = _gradient_buffers(fused)
    h, w = f.shape
    np.subtract(f[:, 1:], f[:, :-1], out=gx[:, :-1])
    gx[:, -1] = 0.0
    np.subtract(f[1:, :], f[:-1, :], out=gy[:-1, :])
    gy[-1, :] = 0.0
    return _gradient_root_mean(gx, gy) / ((h - 1) * (w - 1))


def _grey_levels(img: np.ndarray, name: str) -> np.ndarray | None:
    """The image as ``intp`` levels 0..255 in buffer ``name`` when all its values are such integers, else None."""
    if img.size == 0 or img.min() < 0 or img.max() > 255:
        return None
    levels = _WS.get(name, img.shape, np.intp)
    np.copyto(levels, img, casting="unsafe")
    if not np.array_equal(levels, img):  # a fractional value: not a grey level
        return None
    return levels


def _entropy_nats(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-np.sum(p * np.log(p)))


def _mutual_information_many(fused: np.ndarray, sources: list[np.ndarray]) -> list[float]:
    """MI(F, X) in nats for each source X, as :func:`metrics.direct.mutual_information`, sharing H(F)."""
    f_levels = _grey_levels(fused, "mi_f")
    if f_levels is None:
        return [direct.mutual_information(fused, src) for src in sources]
    n = fused.size
    h_f = _entropy_nats(np.bincount(f_levels.ravel(), minlength=256), n)
    values = []
    for src in sources:
        s_levels = _grey_levels(src, "mi_s")
        if s_levels is None:
            values.append(direct.mutual_information(fused, src))
            continue
        h_s = _entropy_nats(np.bincount(s_levels.ravel(), minlength=256), n)
        cells = np.multiply(f_levels, 256, out=_WS.get("mi_cells", fused.shape, np.intp))
        cells += s_levels
        h_joint = _entropy_nats(np.bincount(cells.ravel(), minlength=256 * 256), n)
        values.append(max(h_f + h_s - h_joint, 0.0))
    return values


def mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """MI in nats of the values present, as :func:`metrics.direct.mutual_information`."""
    return _mutual_information_many(_as_float(x), [_as_float(y)])[0]


def mse(source: np.ndarray, fused: np.ndarray) -> float:
    """mean((source - fused)^2), as :func:`metrics.direct.mse`."""
    s, f = _as_float(source), _as_float(fused)
    return _sum_squares(np.subtract(s, f, out=_WS.get("mse_diff", f.shape))) / f.size


def _psnr_from(fused: np.ndarray, error: float, peak: float | None) -> float:
    top = float(fused.max()) if peak is None else float(peak)
    if error == 0.0:
        return math.inf
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(np.float64(top) ** 2 / error))


def psnr(fused: np.ndarray, source_a: np.ndarray, source_b: np.ndarray, peak: float | None = None) -> float:
    """PSNR in dB, as :func:`metrics.direct.psnr` (+inf when F equals both sources)."""
    error = (mse(source_a, fused) + mse(source_b, fused)) / 2.0
    return _psnr_from(_as_float(fused), error, peak)


def scd(fused: np.ndarray, source_a: np.ndarray, source_b: np.ndarray) -> float:
    """r(A, F - B) + r(B, F - A), as :func:`metrics.direct.scd`; NaN when an image involved is constant."""
    f, a, b = _as_float(fused), _as_float(source_a), _as_float(source_b)
    total = 0.0
    for src, other in ((a, b), (b, a)):
        diff = np.subtract(f, other, out=_WS.get("scd_diff", f.shape))
        total += _correlation_many([src], diff)[0]
    return total


def fusion_metrics(
    fused: np.ndarray,
    ir: np.ndarray,
    vi: np.ndarray,
    convention: Convention | str = Convention.PAPER,
    metrics: str | Sequence[str] | None = None,
) -> dict[str, float]:
    """Fusion metrics, as :func:`metrics.direct.fusion_metrics`, sharing the fused image's statistics.

    Args:
        fused: (H, W) fused gray image in [0, 255].
        ir: (H, W) infrared source (A).
        vi: (H, W) visible source (B).
        convention: ``paper``, ``cddfuse`` or ``tdfusion``.
        metrics: names (see :mod:`metrics.catalog`), ``"all"``, or None for the six of Table I.

    Returns:
        metric name -> float, in the order asked for.
    """
    names = parse_metrics(metrics)
    want = set(names)
    conv = Convention.parse(convention)
    check_shapes(fused, ir, vi)
    f, a, b = _as_float(fused), _as_float(ir), _as_float(vi)
    out: dict[str, float] = {}
    if "EN" in want:
        out["EN"] = entropy(f)
    if "SD" in want:
        out["SD"] = standard_deviation(f)
    if "SF" in want:
        out["SF"] = spatial_frequency(f)
    if "AG" in want:
        out["AG"] = average_gradient(f)
    if "AG_fwd" in want:
        out["AG_fwd"] = average_gradient_forward(f)
    if want & {"MI", "MI_bits"}:
        mi = sum(_mutual_information_many(f, [a, b]))
        out["MI"] = mi
        out["MI_bits"] = mi / math.log(2.0)
    if want & {"MSE", "PSNR", "PSNR_255"}:
        error = (mse(a, f) + mse(b, f)) / 2.0
        out["MSE"] = error
        out["PSNR"] = _psnr_from(f, error, None)
        out["PSNR_255"] = _psnr_from(f, error, 255.0)
    if "CC" in want:
        cc_a, cc_b = _correlation_many([a, b], f)
        out["CC"] = combine(cc_a, cc_b, conv.cc_rule)
    if "SCD" in want:
        out["SCD"] = scd(f, a, b)
    if "VIF" in want:
        vif_a, vif_b = _vif_many([a, b], f)
        out["VIF"] = combine(vif_a, vif_b, conv.vif_rule)
    if "Qabf" in want:
        out["Qabf"] = qabf(a, b, f)
    if "SSIM" in want:
        ssim_a, ssim_b = _ssim_many([a, b], f, conv.ssim_data_range)
        out["SSIM"] = combine(ssim_a, ssim_b, conv.ssim_rule)
    return {name: out[name] for name in names}
