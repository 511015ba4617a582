"""The demo: fuse the bundled real infrared/visible pairs with the shipped model and show what came out.

    python -m scripts.demo [--checkpoint checkpoints/uaafusion_mfnet.pt] [--samples assets/samples] [--out runs/demo]

Writes OUT/fused/ (colour images where the visible image is colour), OUT/fused/maps/ (attribution weights and
attention maps, .npy and PNG heat-maps), OUT/comparison.png (sources, the published SeAFusion outputs, ours,
w_ir and the last stage's attention) and OUT/metrics.json, and prints the six fusion metrics of ours beside the
sources, their average and SeAFusion. About a minute on 2 CPU cores. ``make demo`` runs it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.checkpoint import CheckpointError, load_model_from_checkpoint
from engine.fuse_folder import FuseSettings, fuse_folder
from engine.runtime import prepare_process
from metrics.evaluate import evaluate_folders
from metrics.report import format_table
from scripts.real_results import METRICS, OURS, _clean, comparison_figure
from utils.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "uaafusion_mfnet.pt")
    p.add_argument("--samples", type=Path, default=REPO / "assets" / "samples",
                   help="folder with ir/, vi/ (and SeAFusion/) images paired by name")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "demo")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    prepare_process(args.threads)
    if not args.checkpoint.is_file():
        print(f"error: the model file {args.checkpoint} is missing; it ships with the repository "
              "(checkpoints/README.md). Train one with: python train.py --config configs/mfnet.yaml", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (CheckpointError, OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    model, _ = load_model_from_checkpoint(args.checkpoint)
    samples, out = args.samples, args.out
    fused = out / "fused"
    print(f"fusing the pairs of {samples} with {args.checkpoint.name} ...")
    report = fuse_folder(model, samples / "ir", samples / "vi", fused,
                         FuseSettings(save_maps=True, show_progress=not args.quiet))
    if not report.written:
        print("error: nothing was fused", file=sys.stderr)
        return 1
    methods = {"SeAFusion": samples / "SeAFusion"} if (samples / "SeAFusion").is_dir() else {}
    result = evaluate_folders(samples / "ir", samples / "vi", {**{k: str(v) for k, v in methods.items()},
                                                               OURS: str(fused)}, references=True)
    means = result.comparison().means
    print()
    print(format_table(means, list(METRICS), decimals=3, rank_rows=[*methods, OURS],
                       caption=f"Fusion metrics on the {len(report.written)} bundled pairs (paper convention; the "
                               "marks rank the fusion methods, not the reference rows)"))
    atomic_write_text(out / "metrics.json", json.dumps(_clean({"means": means, "per_image": result.per_image}),
                                                       indent=1))
    names = sorted(report.written)
    comparison_figure(out / "comparison.png", names, samples, methods, fused)
    print(f"\nfused images:     {fused}/")
    print(f"attribution maps: {fused / 'maps'}/  (w_ir, w_vi and the attention of each stage, .npy and .png)")
    print(f"comparison:       {out / 'comparison.png'}")
    print(f"metrics:          {out / 'metrics.json'}")
    print(f"model:            {args.checkpoint} (what it is and its limits: checkpoints/README.md)")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
