"""Fuse every infrared/visible pair of two folders with a trained (or converted release) checkpoint.

    python test.py --checkpoint runs/demo/best.pt --ir DIR --vi DIR --out DIR
    python test.py --config configs/official_release.yaml --checkpoint release.pt --ir DIR --vi DIR --out DIR \
        --stretch --chroma release --save-npy --save-maps

Exit code 0 when every pair was fused, 1 when any pair or file failed (each is named on stderr), 2 on a
usage or set-up error (missing folder, unreadable checkpoint, bad config).
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from engine.checkpoint import CheckpointError
from engine.config import ConfigError, load_config
from engine.fuse_folder import fuse_folder
from engine.trainer import load_model_from_checkpoint, resolve_device


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by train.py or the release converter")
    p.add_argument("--config", default=None, help="build the model from this config instead of the checkpoint's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (with --config)")
    p.add_argument("--ir", required=True, help="folder of infrared images")
    p.add_argument("--vi", required=True, help="folder of visible images (paired with --ir by file stem)")
    p.add_argument("--out", required=True, help="output folder (created; inputs are never overwritten)")
    p.add_argument("--device", default=None, help="cpu | cuda | auto (default: the config's)")
    p.add_argument("--stretch", action="store_true", help="per-image min-max stretch (release) instead of clamping")
    p.add_argument("--chroma", choices=("visible", "release"), default=None,
                   help="chroma of the visible image (default) or the release's weighted chroma of both")
    p.add_argument("--batch", type=int, default=None, help="pairs of the same size fused together (default 1)")
    p.add_argument("--tile", type=int, default=None, help="fuse in tiles of this side to bound memory")
    p.add_argument("--save-npy", action="store_true", help="also write OUT/npy/NAME.npy (raw float32 output)")
    p.add_argument("--save-maps", action="store_true", help="also write OUT/maps/ (w_ir, w_vi, attention per stage)")
    p.add_argument("--ext", default=".png", help="output image extension")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_config(args.config, args.overrides) if args.config else None
        device = resolve_device(args.device or (cfg["device"] if cfg else "auto"))
        model, payload = load_model_from_checkpoint(args.checkpoint, cfg, device)
        cfg = cfg or payload["config"]
        report = fuse_folder(
            model, args.ir, args.vi, args.out, device=device,
            output="stretch" if args.stretch else cfg["test"]["output"],
            chroma=args.chroma or cfg["test"]["chroma"], tile=args.tile or cfg["test"]["tile"],
            save_npy=args.save_npy, save_maps=args.save_maps, extension=args.ext, show_progress=not args.quiet,
            batch_size=args.batch or cfg["test"]["batch_size"],
        )
    except (ConfigError, CheckpointError, OSError, RuntimeError, TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"fused {len(report.written)} pair(s) into {args.out}; {len(report.failed)} failed")
    return 0 if report.ok else 1


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    sys.exit(main())
