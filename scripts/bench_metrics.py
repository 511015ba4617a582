"""Time the direct and the fast fusion metrics in one process on real pairs, and check that they agree.

Usage::

    python -m scripts.bench_metrics [--pairs 3] [--data ../shared/data] [--dataset MSRS] [--repeats 5]
        [--metrics all|EN,SF,...] [--convention paper]

It needs the real pairs of ``../shared/data`` (or ``--data``, or ``$UAAF_SHARED_DATA``): ``DATASET/ir`` and
``DATASET/vi`` with images of the same names; without them it says so and exits with status 2.

Each pair's fused image is a stand-in, the rounded mean of its two sources (the ``average`` reference row of
``eval_metrics.py --references``; there are no fused outputs in the shared data); the metrics' cost does not depend
on the content. Both implementations run serially on one thread (OpenCV pinned to one thread; no process pool).
The fast path is timed as the median of ``--repeats`` runs after one warm-up call, the direct path once per pair,
first all selected metrics together, then each metric alone (the per-metric table). The last line is::

    metrics: direct X s/pair, fast Y s/pair, speedup Z.Zx, max abs diff D, max rel diff R
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.io import ImageReadError, list_images
from data.io import read_gray_0_255_metric_convention as read_gray
from metrics import direct, fast
from metrics.catalog import parse_metrics
from metrics.evaluate import reference_images

DEFAULT_DATA = Path(os.environ.get("UAAF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
EXIT_SETUP = 2


class SetupError(Exception):
    """The benchmark cannot run (no data); the message says what it needs."""


def load_pairs(data: Path, dataset: str, count: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """The first ``count`` pairs (by name) of ``data/dataset/{ir,vi}`` with a stand-in fused image.

    Returns:
        (name, fused, ir, vi) tuples of (H, W) float64 arrays in [0, 255].

    Raises:
        SetupError: the folders are missing, share no image name, or an image cannot be read.
    """
    folders = {side: data / dataset / side for side in ("ir", "vi")}
    missing = [str(f) for f in folders.values() if not f.is_dir()]
    if missing:
        raise SetupError(
            f"no image folders at {' and '.join(missing)}. The benchmark needs real infrared/visible pairs: "
            f"the shared data beside the checkout (../shared/data/{dataset}/ir and .../vi), or --data DIR "
            "(or UAAF_SHARED_DATA) pointing at a folder with DATASET/ir and DATASET/vi"
        )
    ir_files = list_images(folders["ir"]).files
    vi_files = list_images(folders["vi"]).files
    names = sorted(set(ir_files) & set(vi_files))[:count]
    if not names:
        raise SetupError(f"{folders['ir']} and {folders['vi']} have no image name in common")
    pairs = []
    for name in names:
        try:
            ir = read_gray(ir_files[name])
            vi = read_gray(vi_files[name])
        except ImageReadError as err:
            raise SetupError(str(err)) from None
        pairs.append((name, reference_images(ir, vi)["average"], ir, vi))
    return pairs


def _median_time(call: Callable[..., object], call_args: tuple, repeats: int) -> float:
    """Median wall time of ``call(*call_args)`` over ``repeats`` runs."""
    runs = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        call(*call_args)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def _differences(ref: dict[str, float], got: dict[str, float]) -> tuple[float, float]:
    """Largest absolute and relative difference over the finite values (equal infinities count as 0)."""
    abs_diff = rel_diff = 0.0
    for key, want in ref.items():
        have = got[key]
        if math.isfinite(want) and math.isfinite(have):
            d = abs(want - have)
            abs_diff = max(abs_diff, d)
            rel_diff = max(rel_diff, d / max(abs(want), 1e-300))
        elif not (want == have or (math.isnan(want) and math.isnan(have))):
            abs_diff = rel_diff = math.inf
    return abs_diff, rel_diff


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="number of pairs (default 3)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder (default ../shared/data)")
    parser.add_argument("--dataset", default="MSRS", help="MSRS (640x480, default), RoadScene or TNO")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the fast path per pair (median)")
    parser.add_argument("--convention", default="paper", help="paper, cddfuse or tdfusion")
    parser.add_argument("--metrics", default="all", help="comma-separated names or 'all' (default: all twelve)")
    args = parser.parse_args(argv)

    try:
        metrics = parse_metrics(args.metrics)
        pairs = load_pairs(args.data, args.dataset, args.pairs)
    except (SetupError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_SETUP

    cv2.setNumThreads(1)
    fast.fusion_metrics(*pairs[0][1:], args.convention, metrics)  # warm-up: kernels, workspace buffers

    direct_times, fast_times, max_abs, max_rel = [], [], 0.0, 0.0
    per_metric = {k: ([], []) for k in metrics}
    for name, fused, ir, vi in pairs:
        start = time.perf_counter()
        ref = direct.fusion_metrics(fused, ir, vi, args.convention, metrics)
        direct_times.append(time.perf_counter() - start)
        got = fast.fusion_metrics(fused, ir, vi, args.convention, metrics)
        fast_times.append(_median_time(fast.fusion_metrics, (fused, ir, vi, args.convention, metrics), args.repeats))
        abs_diff, rel_diff = _differences(ref, got)
        max_abs, max_rel = max(max_abs, abs_diff), max(max_rel, rel_diff)
        for key in metrics:
            start = time.perf_counter()
            direct.fusion_metrics(fused, ir, vi, args.convention, [key])
            per_metric[key][0].append(time.perf_counter() - start)
            one = (fused, ir, vi, args.convention, [key])
            per_metric[key][1].append(_median_time(fast.fusion_metrics, one, args.repeats))
        h, w = ir.shape
        print(f"{name} ({w}x{h}): direct {direct_times[-1]:.3f} s, fast {fast_times[-1] * 1e3:.1f} ms, "
              f"diff {abs_diff:.1e} (rel {rel_diff:.1e})")  # fmt: skip

    print("per metric, alone (ms/pair): metric  direct  fast")
    for key, (d_times, f_times) in per_metric.items():
        print(f"  {key:<8} {statistics.mean(d_times) * 1e3:9.1f} {statistics.mean(f_times) * 1e3:8.2f}")
    d = statistics.mean(direct_times)
    f = statistics.mean(fast_times)
    print(
        f"(dataset {args.dataset}, {len(pairs)} pairs, metrics {','.join(metrics)}, convention {args.convention}, "
        f"one thread, numpy {np.__version__}, opencv {cv2.__version__})"
    )
    print(f"metrics: direct {d:.3f} s/pair, fast {f:.4f} s/pair, speedup {d / f:.1f}x, max abs diff {max_abs:.1e}, "
          f"max rel diff {max_rel:.1e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
