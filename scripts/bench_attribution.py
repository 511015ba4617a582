"""Time the naive and the fast class-wise IG weights (Eq. 5–8) in one process and compare their values.

    python -m scripts.bench_attribution            # paper training shape: 8×1×128×128, 15 classes, M = 5
    python -m scripts.bench_attribution --quick    # smaller shape, under a minute on 2 CPU cores

Baseline ("naive"): the segmenter in eval mode, one backward per class per step per modality
(:func:`models.attribution.ig_region_attributions_naive`). Fast: one forward over both modalities and all
steps, one backward per class rank (:func:`ig_region_attributions_fast`) on the scoring copy of
:mod:`models.scoring` (BatchNorm folded, fast layers); it is also timed on a copy with the segmenter's own
layers (``fast=False``), which isolates what the scoring copy's layers gain.
The last line reads ``attribution: naive X s, fast Y s, speedup Z.ZZx, max rel diff D`` with
D = max |fast − naive| / max |naive|.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.runtime import configure_threads, tune_allocator
from models.attribution import (
    class_schedule,
    ig_region_attributions_fast,
    ig_region_attributions_naive,
    region_one_hot,
)
from models.scoring import prepare_scoring_model
from models.segmenter import build_segmenter


def blocky_regions(n: int, size: int, classes: int, per_image: int, generator: torch.Generator) -> torch.Tensor:
    """Label maps of rectangles: each image shows ``per_image`` classes drawn from ``classes``."""
    regions = torch.empty(n, size, size, dtype=torch.long)
    for i in range(n):
        chosen = torch.randperm(classes, generator=generator)[:per_image]
        regions[i] = chosen[0]
        for c in chosen[1:]:
            y0, x0 = torch.randint(0, size - size // 4, (2,), generator=generator).tolist()
            h, w = torch.randint(size // 8, size // 2, (2,), generator=generator).tolist()
            regions[i, y0:y0 + h, x0:x0 + w] = c
    return regions


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4×1×64×64, 15 classes, M = 5")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--classes", type=int, default=15)
    parser.add_argument("--per-image", type=int, default=5, help="classes present in each image")
    parser.add_argument("--steps", type=int, default=5, help="M")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs per method")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable cores)")
    parser.add_argument("--encoder", default="mobilenet_v2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk", type=int, default=None,
                        help="images per forward in the fast form (default: the batch size, as the model; "
                             "0: all at once)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="float64 makes the naive-versus-fast difference a test of equality (float32's is "
                             "round-off of an ill-conditioned computation; docs/DECISIONS.md)")
    args = parser.parse_args()
    batch = args.batch or (4 if args.quick else 8)
    size = args.size or (64 if args.quick else 128)
    configure_threads(args.threads)
    tune_allocator()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    device = torch.device(args.device)

    segmenter = build_segmenter(args.classes, encoder=args.encoder).to(device)
    with torch.no_grad():  # give BatchNorm non-trivial statistics, as after training
        segmenter.train()
        for _ in range(3):
            segmenter(torch.rand(max(batch, 2), 1, size, size, device=device))  # BatchNorm needs 2 in training
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    segmenter.eval().requires_grad_(False).to(dtype)
    ir = torch.rand(batch, 1, size, size, generator=gen, dtype=dtype).to(device)
    vi = torch.rand(batch, 1, size, size, generator=gen, dtype=dtype).to(device)
    regions = blocky_regions(batch, size, args.classes, args.per_image, gen).to(device)
    onehot = region_one_hot(regions, args.classes, 255, ir.dtype)
    in_batch = int((onehot.sum(dim=(0, 2, 3)) > 0).sum())
    rounds = class_schedule(onehot).shape[0]
    print(f"shape {batch}×1×{size}×{size}, {args.classes} classes ({in_batch} in the batch, at most {rounds} per "
          f"image), M = {args.steps}, {torch.get_num_threads()} threads, device {device}, {args.dtype}")

    def naive():
        return torch.stack([ig_region_attributions_naive(segmenter, im, regions, args.classes, args.steps)
                            for im in (ir, vi)])

    def fast(fast_scoring: bool = True):
        # counted: the scoring copy is made once per training step
        scoring = prepare_scoring_model(segmenter, fold_batchnorm=True, fast=fast_scoring)
        return ig_region_attributions_fast(scoring, [ir, vi], regions, args.classes, args.steps, chunk=chunk)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    chunk = batch if args.chunk is None else args.chunk
    fast()  # warm-up (allocator, kernels)
    sync()
    t_naive, r_naive = timed(lambda: (naive(), sync())[0], args.repeats)
    print(f"naive: {2 * args.steps * in_batch} backward passes, {t_naive:.2f} s")
    t_fast, r_fast = timed(lambda: (fast(), sync())[0], args.repeats)
    per_chunk = 2 * args.steps * batch if chunk <= 0 else min(chunk, 2 * args.steps * batch)
    print(f"fast:  {rounds} backward passes per chunk of {per_chunk} images, {t_fast:.2f} s")
    t_plain, r_plain = timed(lambda: (fast(False), sync())[0], args.repeats)
    rel_plain = ((r_fast - r_plain).abs().max() / r_plain.abs().max()).item()
    print(f"scoring copy: segmenter's own layers {t_plain:.2f} s, fast scoring {t_fast:.2f} s, "
          f"speedup {t_plain / t_fast:.2f}x, max rel diff {rel_plain:.2e} ({args.dtype})")
    rel = ((r_fast - r_naive).abs().max() / r_naive.abs().max()).item()
    print(f"attribution: naive {t_naive:.2f} s, fast {t_fast:.2f} s, speedup {t_naive / t_fast:.2f}x, "
          f"max rel diff {rel:.2e} ({args.dtype})")


if __name__ == "__main__":
    main()
