"""Time the direct and the fast fusion metrics in one process on real pairs, and check that they agree.

Usage::

    python scripts/bench_metrics.py [--pairs 3] [--data ../shared/data] [--dataset MSRS] [--repeats 5]

Each pair's fused image is a stand-in, the rounded mean of its two sources (there are no fused outputs in the
shared data); the metrics' cost does not depend on the content. Both implementations run serially on one thread
(OpenCV pinned to one thread; no process pool). The fast path is timed as the median of ``--repeats`` runs after
one warm-up call, the direct path once per pair. The last line is::

    metrics: direct X s/pair, fast Y s/pair, speedup Z.Zx, max abs diff D
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics import direct, fast  # noqa: E402
from metrics.evaluate import METRIC_NAMES  # noqa: E402
from metrics.imageio import list_images, read_gray  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("UAAF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def load_pairs(data: Path, dataset: str, count: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """The first ``count`` pairs (by name) of ``data/dataset/{ir,vi}`` with a stand-in fused image.

    Returns:
        (name, fused, ir, vi) tuples of (H, W) float64 arrays in [0, 255].
    """
    ir_files, _ = list_images(data / dataset / "ir")
    vi_files, _ = list_images(data / dataset / "vi")
    names = sorted(set(ir_files) & set(vi_files))[:count]
    if not names:
        raise SystemExit(f"no pairs found under {data / dataset}")
    pairs = []
    for name in names:
        ir = read_gray(ir_files[name])
        vi = read_gray(vi_files[name])
        pairs.append((name, np.round((ir + vi) / 2.0), ir, vi))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="number of pairs (default 3)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder (default ../shared/data)")
    parser.add_argument("--dataset", default="MSRS", help="MSRS (640x480, default), RoadScene or TNO")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the fast path per pair (median)")
    parser.add_argument("--convention", default="paper", help="paper, cddfuse or tdfusion")
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)
    pairs = load_pairs(args.data, args.dataset, args.pairs)
    fast.fusion_metrics(*pairs[0][1:], args.convention)  # warm-up: kernels, workspace buffers

    direct_times, fast_times, max_diff = [], [], 0.0
    for name, fused, ir, vi in pairs:
        start = time.perf_counter()
        ref = direct.fusion_metrics(fused, ir, vi, args.convention)
        direct_times.append(time.perf_counter() - start)
        runs = []
        for _ in range(max(1, args.repeats)):
            start = time.perf_counter()
            got = fast.fusion_metrics(fused, ir, vi, args.convention)
            runs.append(time.perf_counter() - start)
        fast_times.append(statistics.median(runs))
        diff = max(abs(ref[k] - got[k]) for k in METRIC_NAMES)
        max_diff = max(max_diff, diff)
        h, w = ir.shape
        print(f"{name} ({w}x{h}): direct {direct_times[-1]:.3f} s, fast {fast_times[-1] * 1e3:.1f} ms, diff {diff:.1e}")

    d = sum(direct_times) / len(direct_times)
    f = sum(fast_times) / len(fast_times)
    print(
        f"(dataset {args.dataset}, {len(pairs)} pairs, convention {args.convention}, one thread, "
        f"numpy {np.__version__}, opencv {cv2.__version__})"
    )
    print(f"metrics: direct {d:.3f} s/pair, fast {f:.4f} s/pair, speedup {d / f:.1f}x, max abs diff {max_diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
