"""The names of the fusion metrics, which way each one is better, and how ``--metrics`` lists are read.

Definitions are in :mod:`metrics.direct` and ``docs/METRICS.md``. Every name here is a key of the dicts that
``direct.fusion_metrics`` / ``fast.fusion_metrics`` return and of the JSON / CSV that ``eval_metrics.py`` writes.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    """One fusion metric.

    Attributes:
        name: the key in results, JSON and CSV.
        higher_is_better: False only for errors (MSE).
        inputs: ``"fused"`` (F alone) or ``"sources"`` (F against A and B).
        summary: one line for ``--help`` and the docs.
    """

    name: str
    higher_is_better: bool
    inputs: str
    summary: str


_INFO = (
    MetricInfo("EN", True, "fused", "entropy of F, bits"),
    MetricInfo("SD", True, "fused", "standard deviation of F (ddof 0)"),
    MetricInfo("SF", True, "fused", "spatial frequency of F"),
    MetricInfo("AG", True, "fused", "average gradient of F (central differences, one-sided at the border)"),
    MetricInfo("MI", True, "sources", "mutual information MI(F,A) + MI(F,B), nats, grey values as they are"),
    MetricInfo("MSE", False, "sources", "mean squared error, mean of MSE(A,F) and MSE(B,F)"),
    MetricInfo("CC", True, "sources", "Pearson correlation with the sources (combined by convention)"),
    MetricInfo("PSNR", True, "sources", "10 log10(max(F)^2 / MSE), dB"),
    MetricInfo("SCD", True, "sources", "sum of the correlations of differences r(A, F-B) + r(B, F-A)"),
    MetricInfo("VIF", True, "sources", "pixel-domain multiscale VIF (combined by convention)"),
    MetricInfo("Qabf", True, "sources", "Xydeas-Petrovic edge preservation"),
    MetricInfo("SSIM", True, "sources", "SSIM, 7x7 uniform window (combined by convention)"),
    # Variants with the definitions of the MATLAB toolboxes many papers use (docs/METRICS.md).
    MetricInfo("AG_fwd", True, "fused", "AG by forward differences, summed and divided by (H-1)(W-1) (MATLAB)"),
    MetricInfo("MI_bits", True, "sources", "MI in bits (MATLAB)"),
    MetricInfo("PSNR_255", True, "sources", "PSNR with peak 255 instead of max(F) (MATLAB)"),
)

METRICS: dict[str, MetricInfo] = {info.name: info for info in _INFO}
"""Every metric the package computes, by name, in the order tables show them."""

TABLE1_METRICS: tuple[str, ...] = ("EN", "SF", "CC", "VIF", "Qabf", "SSIM")
"""The six metrics of the paper's Table I: the default of ``eval_metrics.py``."""

ALL_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "MSE", "CC", "PSNR", "SCD", "VIF", "Qabf", "SSIM")
"""``--metrics all``: the standard set of the community evaluators (the MATLAB-style variants are not in it)."""

VARIANTS: tuple[str, ...] = ("AG_fwd", "MI_bits", "PSNR_255")


def parse_metrics(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Read a metric selection: None (Table I), ``"all"``, or names separated by commas, in any letter case.

    Args:
        text: ``"EN,MI,psnr"``, ``"all"``, a sequence of names, or None.

    Returns:
        Canonical names in the order given, without repeats.

    Raises:
        ValueError: an unknown name (the message lists the valid ones) or an empty selection.
    """
    if text is None:
        return TABLE1_METRICS
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    items = [t for t in items if t]
    if [t.lower() for t in items] == ["all"]:
        return ALL_METRICS
    lookup = {name.lower(): name for name in METRICS}
    unknown = [t for t in items if t.lower() not in lookup]
    if unknown:
        raise ValueError(f"unknown metric {', '.join(map(repr, unknown))}; choose from {', '.join(METRICS)} or all")
    if not items:
        raise ValueError(f"no metric named; choose from {', '.join(METRICS)} or all")
    return tuple(dict.fromkeys(lookup[t.lower()] for t in items))


def lower_is_better(names: Iterable[str]) -> list[str]:
    """The names among ``names`` whose smaller values are better (MSE)."""
    return [n for n in names if n in METRICS and not METRICS[n].higher_is_better]


def directions(names: Iterable[str]) -> dict[str, str]:
    """``{name: "higher" or "lower"}`` for table headers; unknown names (e.g. published extras) are left out."""
    return {n: "higher" if METRICS[n].higher_is_better else "lower" for n in names if n in METRICS}
