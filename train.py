"""Train UAAFusion: optional segmenter pre-training, then joint training of fusion network and segmenter.

    python train.py --config configs/mfnet.yaml [--set key=value ...] [--run-dir runs/NAME] [--overwrite]
    python train.py --resume runs/NAME                                      # continue, exactly where it stopped
    .venv/bin/torchrun --nproc_per_node=4 train.py --config configs/fmb_paper.yaml   # DDP

The resolved config is saved as RUN_DIR/config.yaml; checkpoints RUN_DIR/last.pt (report results from it) and
best.pt (chosen by validation mIoU); TensorBoard logs RUN_DIR/tb. A run folder is used by one process at a time,
and a folder that already holds a run is only reused with --resume (continue) or --overwrite (start over).
``--resume`` continues from last.pt with the config saved there (from last.prev.pt when last.pt is damaged).
Ctrl-C (SIGINT) or SIGTERM saves a resumable last.pt after the step in progress (a second Ctrl-C stops at once).

Exit codes: 0 done (or nothing left to do), 1 dataset check failed, 2 bad config, data, checkpoint, device or run
folder (also a structure-changing ``--set`` on ``--resume``), 3 non-finite: a NaN/Inf loss with
``train.on_nonfinite_loss: stop``, weights that became NaN/Inf, or an epoch in which every loss was non-finite (no
optimiser step; no checkpoint of non-finite weights is ever written), 4 a file could not be written (disk full,
permissions), 130 / 143 interrupted by SIGINT / SIGTERM (state saved).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from engine.checkpoint import CheckpointError
from engine.config import ConfigError, load_config, load_saved_config, parse_override
from engine.run_folder import RunFolderError, RunFolderLock
from engine.runtime import DeviceError, local_world_size, prepare_process, resolve_device
from engine.trainer import NonFiniteError, Trainer, TrainingInterrupted

EXIT_OK, EXIT_CHECK, EXIT_USAGE, EXIT_NONFINITE, EXIT_WRITE = 0, 1, 2, 3, 4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (keys not given take the paper defaults; all keys: "
                                                   "docs/CONFIG.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--run-dir", default=None, help="output folder (default runs/<config name>)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR (or --run-dir) from its last.pt")
    p.add_argument("--overwrite", action="store_true", help="start over in a run folder that holds an earlier run")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto (overrides the config)")
    p.add_argument("--skip-check", action="store_true", help="do not validate the dataset before training")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: usable cores / processes on this machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _run_dir(args: argparse.Namespace) -> Path:
    if args.resume:
        return Path(args.resume)
    return Path(args.run_dir or f"runs/{Path(args.config or 'default').stem}")


def _check_resume_overrides(overrides: list[str]) -> None:
    """Refuse ``--set`` of a key that shapes the model (``fusion.*``, ``segmenter.*``, ``data.num_classes``) on
    ``--resume``, before anything loads: the run's weights cannot be resumed into another structure."""
    for text in overrides:
        parts = parse_override(text)[0]
        key = ".".join(parts)
        if parts[0] in ("fusion", "segmenter") or parts[:2] == ["data", "num_classes"]:
            raise ConfigError(f"--set {text}: '{key}' changes the model's structure, which a resumed run keeps; "
                              "start a new run (--run-dir NEW, or --overwrite) to change it")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_dir = _run_dir(args)
    trainer = lock = None
    created = not run_dir.exists()
    try:
        prepare_process(args.threads, processes=local_world_size())
        if args.resume is not None:
            if args.overwrite:
                raise ConfigError("--resume continues a run and --overwrite replaces it: give one of them")
            _check_resume_overrides(args.overrides)
            if not run_dir.is_dir():
                raise RunFolderError(f"nothing to resume: run folder {run_dir} does not exist"
                                     + ("" if args.resume else " (give the folder: --resume RUN_DIR)"))
            saved = run_dir / "config.yaml"
            if not saved.is_file() and args.config is None:
                raise RunFolderError(f"nothing to resume in {run_dir}: no config.yaml (and no --config given)")
            cfg = load_saved_config(saved, args.overrides) if saved.is_file() else load_config(args.config,
                                                                                                  args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
        if args.device:
            cfg["device"] = args.device
        resolve_device(cfg["device"])  # fails early, with a message, when CUDA is asked for and absent

        first_rank = int(os.environ.get("RANK", "0")) == 0
        if first_rank:  # a busy folder is refused before the dataset check (seconds); the Trainer shares this lock
            lock = RunFolderLock(run_dir).acquire()
        if cfg["data"]["check"] and not args.skip_check and args.resume is None and first_rank:
            from engine.dataset_check import check_before_training

            if not check_before_training(cfg):
                return EXIT_CHECK
        trainer = Trainer(cfg, run_dir, resume=args.resume is not None, show_progress=not args.quiet,
                          overwrite=args.overwrite)
        if trainer.finished:
            trainer.fit()  # releases the folder
            print(f"nothing to do: the run in {run_dir} has finished all {cfg['train']['epochs']} epochs")
            return EXIT_OK
        previous = _stop_gracefully_on_signals(trainer)
        try:
            trainer.fit()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    except TrainingInterrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print("interrupted before a step finished; nothing new was saved", file=sys.stderr)
        return 128 + signal.SIGINT
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except (ConfigError, CheckpointError, RunFolderError, DeviceError, FileNotFoundError, ValueError,
            TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_WRITE
    finally:
        if lock is not None:
            lock.release()
            if created and trainer is None:  # the run never started: leave no folder behind
                _remove_unused_folder(run_dir)
    written = [name for name in ("last.pt", "best.pt") if (run_dir / name).is_file()]
    print(f"done: {', '.join(written) or 'no checkpoint'} in {run_dir}; TensorBoard: "
          f"{Path(sys.executable).parent / 'tensorboard'} --logdir {run_dir / 'tb'}")
    return EXIT_OK


def _remove_unused_folder(run_dir: Path) -> None:
    """Remove a run folder this process created and left holding only its (released) lock file."""
    try:
        if {p.name for p in run_dir.iterdir()} <= {".lock"}:
            (run_dir / ".lock").unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:
        pass


def _stop_gracefully_on_signals(trainer: Trainer) -> dict:
    """SIGINT/SIGTERM: finish the step in progress, save last.pt, exit 130/143 (single process). A second SIGINT
    interrupts at once. Under DDP, SIGTERM (torchrun stopping the ranks) exits at once, as every rank must.

    Returns:
        The handlers that were in place, to be restored when training ends.
    """
    if trainer.dist.enabled:
        return {}

    def handler(signum, frame):  # noqa: ARG001
        if trainer.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.request_stop(signum)
        # os.write, not print: the signal may arrive while the main thread is inside a print to stderr
        os.write(2, f"\nsignal {signum}: saving after the current step (Ctrl-C again to stop at once)\n".encode())

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return previous


def _exit_on_sigterm(signum, frame):  # noqa: ARG001
    # Before the trainer exists (and under DDP): SIGTERM becomes SystemExit, so that an interrupted checkpoint
    # write removes its temporary file instead of leaving it behind.
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
