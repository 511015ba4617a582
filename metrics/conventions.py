"""How the per-source scores of a fusion metric are combined into one number (docs/METRICS.md).

The community evaluators agree on the metric definitions and differ only in how the two sources A (infrared) and
B (visible) are combined with the fused image F:

| convention | CC   | VIF                    | SSIM                                         |
|------------|------|------------------------|----------------------------------------------|
| paper      | mean | sum VIF(A,F)+VIF(B,F)  | mean, data range 255                         |
| cddfuse    | mean | sum                    | sum, data range 2 (old scikit-image, float)  |
| tdfusion   | mean | mean                   | mean, data range 255                         |

EN, SD, SF and AG are computed on F alone; Qabf is a joint score of (A, B, F); MI, MSE, PSNR and SCD combine the
sources one fixed way (sum, mean, the mean MSE, sum). None of them depends on the convention.

``paper`` (the default) matches the magnitudes of the paper's Table I. ``cddfuse`` reproduces the widely used
Python evaluator published by the CDDFuse/DDFM authors, whose SSIM call passes float images without a
``data_range``: scikit-image before 0.19 then took the range of the float dtype, [-1, 1], i.e. data range 2, so
C1 = (0.01 * 2)^2 and C2 = (0.03 * 2)^2 although the pixel values are 0-255. ``tdfusion`` is the first author's
later evaluator.
"""
from __future__ import annotations

from enum import Enum


class Convention(str, Enum):
    """Rule for combining the two sources; see the module docstring for the table."""

    PAPER = "paper"
    CDDFUSE = "cddfuse"
    TDFUSION = "tdfusion"

    @property
    def vif_rule(self) -> str:
        """``"sum"`` or ``"mean"`` of VIF(A, F) and VIF(B, F)."""
        return "mean" if self is Convention.TDFUSION else "sum"

    @property
    def ssim_rule(self) -> str:
        """``"sum"`` or ``"mean"`` of SSIM(F, A) and SSIM(F, B)."""
        return "sum" if self is Convention.CDDFUSE else "mean"

    @property
    def ssim_data_range(self) -> float:
        """The ``L`` of SSIM's constants C1 = (K1 L)^2, C2 = (K2 L)^2."""
        return 2.0 if self is Convention.CDDFUSE else 255.0

    @property
    def cc_rule(self) -> str:
        """Always ``"mean"`` of r(A, F) and r(B, F)."""
        return "mean"

    def describe(self) -> str:
        """One line naming the convention and its combination rules, for printing next to every result."""
        return (
            f"convention: {self.value} (CC {self.cc_rule}, VIF {self.vif_rule}, SSIM {self.ssim_rule} "
            f"with data range {self.ssim_data_range:g})"
        )

    @classmethod
    def parse(cls, value: str | Convention) -> Convention:
        """Accept a member or its name (case-insensitive); raise ``ValueError`` listing the choices otherwise."""
        if isinstance(value, Convention):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            choices = ", ".join(c.value for c in cls)
            raise ValueError(f"unknown convention {value!r}; choose one of {choices}") from None


def combine(a: float, b: float, rule: str) -> float:
    """Combine two per-source scores with ``rule`` (``"sum"`` or ``"mean"``)."""
    if rule == "sum":
        return a + b
    if rule == "mean":
        return (a + b) / 2.0
    raise ValueError(f"unknown combination rule {rule!r}")
