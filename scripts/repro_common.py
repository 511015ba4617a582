"""Shared plumbing of the reproduction scripts (one script per table and figure of the paper).

- **Result folders.** Every output of a script lives under one ``--results`` folder. A unit of work (a training
  run, a fused folder, a metrics file) counts as finished when its result file or its ``_done.json`` marker
  exists; re-running a script skips finished units, ``--force`` redoes them.
- **Running a config.** :func:`train_config` trains a resolved config with :class:`engine.trainer.Trainer`,
  resuming an interrupted run from its ``last.pt``; :func:`fuse_set` fuses a folder pair with the machinery behind
  ``test.py`` (:func:`engine.fuse_folder.fuse_folder`); :func:`evaluate_set` computes the six fusion metrics.
- **Tables.** Published rows (``configs/published/*.yaml``) and ours side by side, printed and written as
  Markdown, JSON and CSV (:func:`write_tables`).

The scripts run as modules from the repository root (``python -m scripts.NAME``) and import this one as
``scripts.repro_common``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics.report import write_csv, write_json
from utils.atomic import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]

PUBLISHED_DIR = REPO_ROOT / "configs" / "published"
DONE_MARKER = "_done.json"
PAPER_SUFFIX = " (paper)"
OURS_SUFFIX = " (ours)"
FUSION_COLUMNS = ("EN", "SF", "CC", "VIF", "Qabf", "SSIM")
# Keys that do not change what a run computes; left out of the fingerprint that tells runs apart.
NON_RESULT_KEYS = ("device", "data.num_workers", "train.log_every", "train.image_log_every",
                   "train.checkpoint_every_steps")


class ReproError(RuntimeError):
    """A reproduction step cannot go on (bad input, or a finished run that does not match the request)."""


# ------------------------------------------------------------------------------------------- command line


def add_common_args(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """``--results``, ``--force``, ``--quiet`` and (unless ``device`` is False) ``--device``."""
    group = parser.add_argument_group("bookkeeping")
    group.add_argument("--results", type=Path, default=Path("results"),
                       help="folder for every output of this script (default: results/)")
    group.add_argument("--force", action="store_true",
                       help="redo finished units instead of skipping them (their old outputs are removed)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")
    if device:
        group.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto (default: the config's)")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--set KEY=VALUE`` (as in train.py / test.py)."""
    parser.add_argument("--config", type=Path, default=None,
                        help="build the model from this config instead of the checkpoint's own")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set test.tile=512")


def parse_named(values: Iterable[str], option: str) -> dict[str, str]:
    """``NAME=VALUE`` arguments → ordered {name: value}; names must be unique.

    Raises:
        ReproError: a value without ``=`` or a name given twice.
    """
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ReproError(f"{option} expects NAME=VALUE, got {value!r}")
        if name in out:
            raise ReproError(f"{option}: name {name!r} given twice")
        out[name] = rest
    return out


def safe_name(name: str) -> str:
    """A folder name for a set, method or unit name (anything but letters, digits, ``.``, ``_``, ``-`` → ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def progress(iterable: Iterable, desc: str, quiet: bool, total: int | None = None, unit: str = "it"):
    """A tqdm bar on stderr (silent when ``quiet``)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=quiet, unit=unit, dynamic_ncols=True)


def say(message: str) -> None:
    """One status line on stdout, flushed (progress bars go to stderr)."""
    print(message, flush=True)


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ bookkeeping


def is_done(folder: Path) -> bool:
    """True when ``folder`` holds the marker of a finished unit."""
    return (Path(folder) / DONE_MARKER).is_file()


def read_marker(folder: Path) -> dict[str, Any]:
    """The JSON content of a finished unit's marker."""
    return json.loads((Path(folder) / DONE_MARKER).read_text(encoding="utf-8"))


def mark_done(folder: Path, info: Mapping[str, Any]) -> None:
    """Write the marker of a finished unit (atomically), with ``info`` and the time."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    document = {"finished": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
    atomic_write_text(folder / DONE_MARKER, json.dumps(document, indent=2, default=_json_default) + "\n")


def remove_output(path: Path, results: Path) -> None:
    """Delete a previous output (file or folder) before ``--force`` redoes it; only inside the results folder."""
    path, results = Path(path).resolve(), Path(results).resolve()
    if results != path and results not in path.parents:
        raise ReproError(f"refusing to delete {path}: it is not inside the results folder {results}")
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_safe(value: Any) -> Any:
    """``value`` with NaN / infinities as None, numpy scalars as numbers and paths as strings (for strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_json(path: Path) -> Any:
    """Parse a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------- running configs


def config_fingerprint(cfg: Mapping[str, Any]) -> str:
    """A short hash of everything in a resolved config that changes a run's result."""
    from engine.config import flatten

    flat = {k: v for k, v in flatten(dict(cfg)).items() if k not in NON_RESULT_KEYS}
    return hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_run_config(path: Path | str | None, overrides: Sequence[str], device: str | None = None) -> dict:
    """``engine.config.load_config`` with an optional device override; ConfigError becomes ReproError."""
    from engine.config import ConfigError, load_config

    extra = [f"device={device}"] if device else []
    try:
        return load_config(path, [*overrides, *extra])
    except ConfigError as err:
        raise ReproError(str(err)) from err


def train_config(cfg: dict, run_dir: Path, *, results: Path, force: bool = False, quiet: bool = False,
                 checkpoint: str = "last.pt") -> Path:
    """Train ``cfg`` into ``run_dir`` unless that run is finished; resume it when it was interrupted.

    Args:
        cfg: resolved config (engine.config.load_config).
        run_dir: the run folder (config.yaml, last.pt, best.pt, tb/, and ``_done.json`` once finished).
        results: the script's results folder (``--force`` only deletes inside it).
        force: start over even when the run is finished or half done.
        quiet: no progress bars.
        checkpoint: which checkpoint the caller wants back (``last.pt`` or ``best.pt``).

    Returns:
        Path of the requested checkpoint.

    Raises:
        ReproError: the folder holds a run of a different config (use another folder or ``--force``).
    """
    import yaml

    from engine.trainer import Trainer

    run_dir = Path(run_dir)
    fingerprint = config_fingerprint(cfg)
    if force and run_dir.exists():
        remove_output(run_dir, results)
    if is_done(run_dir):
        found = read_marker(run_dir).get("fingerprint")
        if found != fingerprint:
            raise ReproError(f"{run_dir} holds a finished run of another config (fingerprint {found}, requested "
                             f"{fingerprint}); pass --force to retrain it or choose another --results folder")
        return run_dir / checkpoint
    resume = (run_dir / "last.pt").is_file() or (run_dir / "last.prev.pt").is_file()
    if resume:
        saved_config = run_dir / "config.yaml"  # the run's resolved config, written when it started
        saved = config_fingerprint(yaml.safe_load(saved_config.read_text(encoding="utf-8"))) \
            if saved_config.is_file() else None
        if saved != fingerprint:
            raise ReproError(f"{run_dir} holds an unfinished run of another config; pass --force to start over")
        say(f"resuming the interrupted run in {run_dir}")
    start = time.perf_counter()
    history = Trainer(cfg, run_dir, resume=resume, show_progress=not quiet, overwrite=not resume).fit()
    mark_done(run_dir, {"fingerprint": fingerprint, "seconds": round(time.perf_counter() - start, 1),
                        "history": history})
    return run_dir / checkpoint


@dataclass
class FusionModel:
    """A checkpoint, loaded on first use (skipped units never pay for it).

    Attributes:
        checkpoint: training checkpoint (train.py) or a converted release checkpoint.
        class_names: the checkpoint's class names (filled by :meth:`get`).
        config: build the model from this config file instead of the checkpoint's own config.
        overrides: ``KEY=VALUE`` overrides (applied to ``config``, or to the checkpoint's config).
        device: cpu / cuda / auto; None = the config's.
    """

    checkpoint: Path
    config: Path | None = None
    overrides: Sequence[str] = ()
    device: str | None = None
    class_names: list[str] = field(default_factory=list, init=False)
    _loaded: tuple[Any, dict, Any] | None = field(default=None, init=False, repr=False)

    def get(self) -> tuple[Any, dict, Any]:
        """(model in eval mode, resolved config, torch device); also fills :attr:`class_names`."""
        if self._loaded is None:
            from engine.checkpoint import CheckpointError, load_checkpoint, load_model_from_checkpoint
            from engine.config import ConfigError, load_config, merge
            from engine.runtime import resolve_device

            try:
                if self.config is not None:
                    cfg = load_config(self.config, self.overrides)
                else:
                    cfg = load_checkpoint(self.checkpoint)["config"]
                    for text in self.overrides:
                        cfg = merge(cfg, _override_tree(text))
                device = resolve_device(self.device or cfg["device"])
                model, payload = load_model_from_checkpoint(self.checkpoint, cfg, device)
            except (CheckpointError, ConfigError) as err:
                raise ReproError(str(err)) from err
            names = list(payload.get("class_names") or [])
            self.class_names = names if len(names) == model.num_classes else [f"class{i}" for i in
                                                                              range(model.num_classes)]
            self._loaded = (model, cfg, device)
        return self._loaded


def _override_tree(text: str) -> dict:
    from engine.config import parse_override

    keys, value = parse_override(text)
    nested: Any = value
    for key in reversed(keys):
        nested = {key: nested}
    return nested


def file_identity(path: Path) -> dict[str, Any]:
    """Path, size and modification time of a file: a retrained checkpoint at the same path differs."""
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def pair_names(ir_dir: Path, vi_dir: Path) -> list[str]:
    """Stems of the complete pairs of two folders, sorted."""
    from data.datasets import pair_files

    return [p.name for p in pair_files(ir_dir, vi_dir)[0]]


def fuse_set(model: FusionModel, ir_dir: Path, vi_dir: Path, out_dir: Path, *, results: Path, force: bool = False,
             quiet: bool = False, save_maps: bool = False) -> bool:
    """Fuse every pair of ``ir_dir``/``vi_dir`` into ``out_dir`` (as ``test.py`` does) unless already done.

    The folder counts as finished when its marker names the same checkpoint (path, size, time) and every pair
    now present; it is marked only when every pair was fused, so a re-run retries failures.

    Returns:
        True when fusion ran (metrics and anything trained on the old images are then stale), False when the
        folder was already finished with this checkpoint.
    """
    from engine.fuse_folder import FuseSettings, fuse_folder

    out_dir = Path(out_dir)
    names = pair_names(ir_dir, vi_dir)
    source = file_identity(model.checkpoint)
    if is_done(out_dir) and not force:
        marker = read_marker(out_dir)
        if marker.get("checkpoint") == source and set(names) <= set(marker.get("names", [])):
            return False
        if marker.get("checkpoint") != source:
            say(f"{out_dir}: fused with another checkpoint before; fusing again")
    if out_dir.exists():
        remove_output(out_dir, results)
    net, cfg, device = model.get()
    start = time.perf_counter()
    t = cfg["test"]
    settings = FuseSettings(output=t["output"], chroma=t["chroma"], tile=t["tile"], max_memory_gb=t["max_memory_gb"],
                            save_maps=save_maps, show_progress=not quiet, batch_size=t["batch_size"], amp=cfg["amp"])
    report = fuse_folder(net, ir_dir, vi_dir, out_dir, settings, device=device)
    if not report.written:
        raise ReproError(f"nothing fused from {ir_dir} and {vi_dir}: "
                         + "; ".join(f"{n}: {r}" for n, r in report.failed[:3]))
    if report.failed:
        warn(f"{len(report.failed)} pair(s) of {ir_dir} failed (listed above); {out_dir} is left unfinished")
    else:
        mark_done(out_dir, {"checkpoint": source, "ir": str(ir_dir), "vi": str(vi_dir),
                            "seconds": round(time.perf_counter() - start, 1), "names": sorted(report.written)})
    return True


def evaluate_set(ir_dir: Path, vi_dir: Path, fused_dir: Path, json_path: Path, *, results: Path,
                 convention: str = "paper", workers: int = 0, force: bool = False, quiet: bool = False,
                 method: str = "ours") -> dict[str, float]:
    """The six fusion metrics of one fused folder (means over its images), cached in ``json_path``.

    Writes ``json_path`` (metrics.evaluate's document: per image, means, failures) and a per-image CSV beside it.

    Returns:
        metric name → mean (NaN where undefined).
    """
    from metrics.evaluate import evaluate_folders

    json_path = Path(json_path)
    if force and json_path.exists():
        remove_output(json_path, results)
    if not _cached_metrics_fit(json_path, convention, method, pair_names(ir_dir, vi_dir)):
        result = evaluate_folders(ir_dir, vi_dir, {method: fused_dir}, convention, workers=workers,
                                  progress=not quiet)
        for line in result.notes:
            warn(line)
        for line in result.failure_lines():
            warn(line)
        if not result.per_image.get(method):
            raise ReproError(f"no fused image of {fused_dir} could be evaluated against {ir_dir} / {vi_dir}")
        write_json(json_path, result.to_json())
        write_csv(json_path.with_suffix(".csv"), *result.csv_rows())
    means = read_json(json_path)["methods"][method]["mean"]
    return {k: math.nan if v is None else float(v) for k, v in means.items()}


def _cached_metrics_fit(json_path: Path, convention: str, method: str, names: Sequence[str]) -> bool:
    """True when a metrics file exists, used ``convention`` and covers exactly the pairs ``names``."""
    if not json_path.is_file():
        return False
    document = read_json(json_path)
    if document.get("convention") != convention or method not in document.get("methods", {}):
        return False
    seen = set(document["methods"][method]["per_image"]) | set(document.get("failed", {}).get(method, {}))
    return seen == set(names)


# -------------------------------------------------------------------------------------------- data helpers


def subset_pairs(ir_dir: Path, vi_dir: Path, dest: Path, *, max_pairs: int | None = None,
                 names: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Folders ``dest/{ir,vi}`` linking (or copying) a subset of the pairs: listed ``names``, else the first
    ``max_pairs`` by name. Without either, the original folders are returned unchanged.

    Raises:
        ReproError: a listed name has no pair, or nothing is left.
    """
    from data.datasets import pair_files

    if max_pairs is None and not names:
        return Path(ir_dir), Path(vi_dir)
    pairs, _ = pair_files(ir_dir, vi_dir)
    by_name = {p.name: p for p in pairs}
    if names:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ReproError(f"no pair named {missing[:5]} in {ir_dir} / {vi_dir}")
        chosen = [by_name[n] for n in names]
    else:
        chosen = pairs
    if max_pairs is not None:
        chosen = chosen[:max_pairs]
    if not chosen:
        raise ReproError(f"no image pairs in {ir_dir} / {vi_dir}")
    dest = Path(dest)
    for sub in ("ir", "vi"):
        if (dest / sub).exists():
            shutil.rmtree(dest / sub)
        (dest / sub).mkdir(parents=True)
    for pair in chosen:
        link_or_copy(pair.ir, dest / "ir" / pair.ir.name)
        link_or_copy(pair.vi, dest / "vi" / pair.vi.name)
    return dest / "ir", dest / "vi"


def link_or_copy(src: Path, dst: Path) -> None:
    """Symlink ``dst`` → ``src`` (absolute), or copy where links are not allowed."""
    src = Path(src).resolve()
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run_cli(build_parser, run, argv: list[str] | None = None) -> int:
    """Parse ``argv`` with ``build_parser()`` and call ``run(args)``; a :class:`ReproError` becomes exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ReproError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    print(__doc__.strip())
    print("\nThis module is the scripts' shared library and does nothing by itself; run one of: "
          "python -m scripts.{table1_fusion,table2_segmentation,ablations,figures,prepare_data} --help")
    sys.exit(0 if set(sys.argv[1:]) <= {"-h", "--help"} else 2)
