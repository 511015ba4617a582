"""Train UAAFusion: optional segmenter pre-training, then joint training of fusion network and segmenter.

    python train.py --config configs/fmb_paper.yaml [--set key=value ...] [--run-dir runs/NAME] [--resume]
    torchrun --nproc_per_node=4 train.py --config configs/fmb_paper.yaml      # DDP

The resolved config is saved as RUN_DIR/config.yaml; checkpoints RUN_DIR/last.pt and best.pt; TensorBoard
logs RUN_DIR/tb. ``--resume`` continues the run in RUN_DIR from last.pt with the config saved there (from
last.prev.pt when last.pt is damaged). Exit codes: 0 done, 1 dataset check failed, 2 bad config/data/
checkpoint, 3 non-finite loss with ``train.on_nonfinite_loss: stop``.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from engine.checkpoint import CheckpointError
from engine.config import ConfigError, load_config
from engine.trainer import NonFiniteLossError, Trainer


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (keys not given take the paper defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--run-dir", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR (or --run-dir) from its last.pt")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto (overrides the config)")
    p.add_argument("--skip-check", action="store_true", help="do not validate the dataset before training")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_dir = Path(args.resume or args.run_dir or f"runs/{Path(args.config or 'default').stem}")
    try:
        if args.resume is not None:
            saved = run_dir / "config.yaml"
            cfg = load_config(saved if saved.is_file() else args.config, args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
        if args.device:
            cfg["device"] = args.device

        if cfg["data"]["check"] and not args.skip_check and args.resume is None:
            from engine.dataset_check import check_before_training

            if not check_before_training(cfg):
                return 1
        trainer = Trainer(cfg, run_dir, resume=args.resume is not None, show_progress=not args.quiet)
        trainer.fit()
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(f"done: checkpoints in {run_dir} (last.pt, best.pt); TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    return 0


def _exit_on_sigterm(signum, frame):  # noqa: ARG001
    # Turn SIGTERM (sent by torchrun when another rank fails, or by a scheduler) into SystemExit so that
    # an interrupted checkpoint write removes its temporary file instead of leaving it behind.
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
