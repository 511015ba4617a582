"""Fuse the same real pairs in several precisions and compare: time per pair, how far the fused images and the
attribution weights move, and the fusion metrics (docs/PERFORMANCE.md "bf16", docs/DECISIONS.md D9).

    python -m scripts.compare_precision --checkpoint checkpoints/uaafusion_mfnet.pt \\
        --ir ../shared/data/MSRS_labelled/ir --vi ../shared/data/MSRS_labelled/vi --pairs 6 --modes float64,float32,bf16

Modes: ``float32`` (default path), ``bf16`` (the fusion network under bfloat16 autocast; attribution in float32),
``float64`` (everything in double precision: the reference when given). Each mode fuses the pairs one at a time,
after one warm-up pair. Differences are in grey levels of the 8-bit output (the clamped fused luminance × 255).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.io import load_fusion_pair
from data.pairing import pair_files
from engine.checkpoint import load_model_from_checkpoint
from engine.inference import fuse
from engine.runtime import prepare_process
from engine.validation import to_0_255
from metrics.fast import fusion_metrics

MODES = ("float64", "float32", "bf16")
METRICS = ("EN", "SF", "CC", "VIF", "Qabf", "SSIM")


def run_mode(model, pairs: list[dict], mode: str) -> tuple[float, list[np.ndarray], list[np.ndarray], dict]:
    """Fuse every pair in ``mode``: (seconds per pair, fused 0-255 arrays, w_ir maps, metric means)."""
    dtype = torch.float64 if mode == "float64" else torch.float32
    net = copy.deepcopy(model).to(dtype)
    amp = "bf16" if mode == "bf16" else "none"

    def one(sample):
        ir = torch.from_numpy(sample["ir"])[None, None].to(dtype)
        vi = torch.from_numpy(sample["vi_y"])[None, None].to(dtype)
        return fuse(net, ir, vi, amp=amp), ir, vi

    one(pairs[0])  # warm-up
    fused, weights, sums, seconds = [], [], {m: 0.0 for m in METRICS}, 0.0
    for sample in pairs:
        start = time.perf_counter()
        out, ir, vi = one(sample)
        seconds += time.perf_counter() - start
        image = to_0_255(out.fused.float())
        fused.append(image)
        weights.append(out.w_ir[0, 0].double().numpy())
        values = fusion_metrics(image, to_0_255(ir.float()), to_0_255(vi.float()), convention="paper")
        for m in METRICS:
            sums[m] += float(values[m])
    return seconds / len(pairs), fused, weights, {m: v / len(pairs) for m, v in sums.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--ir", required=True)
    p.add_argument("--vi", required=True)
    p.add_argument("--pairs", type=int, default=6, help="the first N pairs by name")
    p.add_argument("--modes", default="float64,float32,bf16", help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        print(f"error: --modes must name some of {MODES}", file=sys.stderr)
        return 2
    threads = prepare_process(args.threads)
    found, _ = pair_files(args.ir, args.vi)
    if not found:
        print(f"error: no pairs in {args.ir} and {args.vi}", file=sys.stderr)
        return 2
    pairs = [load_fusion_pair(pair.ir, pair.vi) for pair in found[: args.pairs]]
    model, _ = load_model_from_checkpoint(args.checkpoint)
    results = {mode: run_mode(model, pairs, mode) for mode in modes}
    reference = modes[0]
    h, w = pairs[0]["ir"].shape
    print(f"{len(pairs)} pairs of {w}x{h} from {args.ir}, {threads} threads; differences against {reference}")
    print(f"{'mode':8s} {'s/pair':>7s} {'max |dF|':>9s} {'mean |dF|':>10s} {'>1 level':>9s} {'max |dw_ir|':>12s}  "
          + "  ".join(f"{m:>6s}" for m in METRICS))
    ref_fused, ref_w = results[reference][1], results[reference][2]
    for mode in modes:
        seconds, fused, weights, means = results[mode]
        diffs = np.concatenate([np.abs(a - b).ravel() for a, b in zip(fused, ref_fused)])
        dw = max(float(np.abs(a - b).max()) for a, b in zip(weights, ref_w))
        print(f"{mode:8s} {seconds:7.2f} {diffs.max():9.0f} {diffs.mean():10.4f} {(diffs > 1).mean():9.2%} "
              f"{dw:12.2e}  " + "  ".join(f"{means[m]:6.3f}" for m in METRICS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
