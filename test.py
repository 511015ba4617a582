"""Fuse every infrared/visible pair of two folders with a trained (or converted release) checkpoint.

    python test.py --checkpoint checkpoints/uaafusion_mfnet.pt --ir DIR --vi DIR --out DIR
    python test.py --config configs/official_release.yaml --checkpoint release.pt --ir DIR --vi DIR --out DIR
        --stretch --chroma release --input-reading release --save-npy --save-maps

Exit code 0 when every pair was fused, 1 when any pair or file failed (each is named on stderr), 2 on a
usage or set-up error (missing folder, unreadable checkpoint, bad config or option, an output folder in which no
file can be created), checked before any work.
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from engine.checkpoint import CheckpointError, load_model_from_checkpoint
from engine.compile import compile_fusion
from engine.config import ConfigError, load_config
from engine.fuse_folder import DEFAULT_MAX_MEMORY_GB, FuseSettings, fuse_folder
from engine.runtime import prepare_process, resolve_device


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by train.py or the release converter")
    p.add_argument("--config", default=None, help="build the model from this config instead of the checkpoint's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (of --config, or else of the checkpoint's own config)")
    p.add_argument("--ir", required=True, help="folder of infrared images")
    p.add_argument("--vi", required=True, help="folder of visible images (paired with --ir by file stem)")
    p.add_argument("--out", required=True, help="output folder (created; inputs are never overwritten)")
    p.add_argument("--labels", default=None, metavar="DIR",
                   help="regions from these label maps (paired by stem; the training path) instead of the "
                        "segmenter's argmax")
    p.add_argument("--device", default=None, help="cpu | cuda | auto (default: the config's)")
    p.add_argument("--precision", choices=("float32", "float64"), default="float32",
                   help="float64 runs model and inputs in double precision (exact comparisons; ~2-4x slower)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None,
                   help="autocast for the fusion network (default: the config's amp); attribution stays float32")
    p.add_argument("--stretch", action="store_true", help="per-image min-max stretch (release) instead of clamping")
    p.add_argument("--chroma", choices=("visible", "release"), default=None,
                   help="chroma of the visible image (default) or the release's weighted chroma of both")
    p.add_argument("--input-reading", choices=("exact", "release"), default=None,
                   help="exact v/255 luminance (default) or the release's float32 YCrCb of 8-bit RGB (release row 16; "
                        "default: the config's test.input_reading)")
    p.add_argument("--batch", type=int, default=None, help="pairs of the same size fused together (default 1)")
    p.add_argument("--tile", type=int, default=None,
                   help="fuse in tiles of this side (at least 64, twice the 32-pixel overlap) to bound memory")
    p.add_argument("--max-memory", type=float, default=None, metavar="GB",
                   help="fuse in tiles when an image would need more memory (default: the config's "
                        f"test.max_memory_gb, {DEFAULT_MAX_MEMORY_GB:g}; 0 = never tile automatically)")
    p.add_argument("--save-npy", action="store_true", help="also write OUT/npy/NAME.npy (raw output)")
    p.add_argument("--save-maps", action="store_true",
                   help="also write OUT/maps/ (w_ir, w_vi, attention per stage, the regions as class indices and "
                        "colour)")
    p.add_argument("--ext", default=".png",
                   help="output image format, lossless and read back by eval_metrics.py: .png (default), .bmp, .tif, "
                        ".tiff")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the fusion network's stages (engine/compile.py; recompiles per image size, so "
                        "worth it for many pairs of one size; eager with a warning where no compiler works)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable cores; never more)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace, cfg: dict) -> FuseSettings:
    """The fusing settings: command line first, then the config's ``test:`` block and ``amp``."""
    t = cfg["test"]
    max_memory = t["max_memory_gb"] if args.max_memory is None else (args.max_memory or None)
    return FuseSettings(
        output="stretch" if args.stretch else t["output"], chroma=args.chroma or t["chroma"],
        tile=args.tile if args.tile is not None else t["tile"], max_memory_gb=max_memory,
        save_npy=args.save_npy, save_maps=args.save_maps, extension=args.ext,
        batch_size=args.batch if args.batch is not None else t["batch_size"],
        amp=args.amp or cfg["amp"], precision=args.precision, labels_dir=args.labels,
        input_reading=args.input_reading or t["input_reading"], show_progress=not args.quiet,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        prepare_process(args.threads)
        cfg = load_config(args.config, args.overrides) if args.config else None
        device = resolve_device(args.device or (cfg["device"] if cfg else "auto"))
        model, payload = load_model_from_checkpoint(args.checkpoint, cfg, device, overrides=args.overrides)
        cfg = payload["config"]
        settings = settings_from(args, cfg)
        if args.amp is None and settings.precision == "float64":
            settings.amp = "none"
        settings.validate()
        if settings.precision == "float64":
            model = model.to(torch.float64)
        if args.compile:
            compile_fusion(model.fusion, device)
        report = fuse_folder(model, args.ir, args.vi, args.out, settings, device)
    except (ConfigError, CheckpointError, OSError, RuntimeError, TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"fused {len(report.written)} pair(s) into {args.out}; {len(report.failed)} failed")
    return 0 if report.ok else 1


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    sys.exit(main())
