"""Table I: the six fusion metrics of a checkpoint on FMB and on the MSRS / RoadScene generalisation sets, printed
beside the paper's published rows.

    python -m scripts.table1_fusion --checkpoint runs/fmb/last.pt \\
        --fmb datasets/FMB --msrs datasets/MSRS --roadscene datasets/RoadScene
    python -m scripts.table1_fusion --checkpoint CKPT --sets sets.yaml
    python -m scripts.table1_fusion --checkpoint CKPT --pairs FMB IR_DIR VI_DIR --pairs MSRS IR_DIR VI_DIR

``--fmb ROOT`` uses ROOT/test/{Infrared,Visible}; ``--msrs ROOT`` ROOT/test/{ir,vi} (or ROOT/{ir,vi});
``--roadscene ROOT`` ROOT/{cropinfrared,crop_LR_visible} (or ROOT/{ir,vi}). A sets file (YAML) lists them freely:

    FMB: {ir: datasets/FMB/test/Infrared, vi: datasets/FMB/test/Visible}
    MSRS: {ir: datasets/MSRS/test/ir, vi: datasets/MSRS/test/vi, names: msrs50.txt}   # or max_pairs: 50
    RoadScene: {ir: datasets/RoadScene/ir, vi: datasets/RoadScene/vi, fused: DIR}      # evaluate DIR as it is

Relative paths are taken from the current folder; ``names`` is a list of file stems or a text file with one per
line. A set named like a dataset of the published file (FMB, MSRS, RoadScene; case-insensitive) gets the paper's
rows beside ours. Each set is fused exactly as ``test.py`` fuses (the checkpoint's ``test`` settings: clamped
output, visible chroma) and evaluated with the metrics library in the chosen convention (default ``paper``, whose
magnitudes match the paper's Table I).

Outputs under RESULTS/table1/:

    fused/<SET>/            fused images, and _done.json once every pair is fused
    subsets/<SET>/{ir,vi}   links to the chosen pairs (only when names / max_pairs select a subset)
    metrics/<SET>.json      per-image metrics, means and failures; metrics/<SET>.csv per image
    table1.md/.json/.csv    ours beside the published rows, one table per set

Finished sets are skipped on a re-run (``--force`` redoes them).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.repro_common import (
    FUSION_COLUMNS,
    OURS_SUFFIX,
    PUBLISHED_DIR,
    FusionModel,
    ReproError,
    add_common_args,
    add_config_args,
    evaluate_set,
    fuse_set,
    pair_names,
    progress,
    run_cli,
    safe_name,
    subset_pairs,
)
from scripts.repro_tables import Section, published_rows, write_tables

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_PUBLISHED = PUBLISHED_DIR / "table1_fusion.yaml"
# (infrared, visible) sub-folders tried in order under a dataset root.
LAYOUTS: dict[str, list[tuple[str, str]]] = {
    "FMB": [("test/Infrared", "test/Visible"), ("Infrared", "Visible")],
    "MSRS": [("test/ir", "test/vi"), ("ir", "vi")],
    "RoadScene": [("cropinfrared", "crop_LR_visible"), ("ir", "vi")],
}


@dataclass
class PairSet:
    """One evaluation set: source folders, optional subset, optional existing fused folder."""

    name: str
    ir: Path
    vi: Path
    fused: Path | None = None
    names: list[str] | None = None
    max_pairs: int | None = None


def locate(kind: str, root: Path) -> tuple[Path, Path]:
    """The (ir, vi) folders of a dataset root in one of the known layouts of ``kind``."""
    for ir, vi in LAYOUTS[kind]:
        if (root / ir).is_dir() and (root / vi).is_dir():
            return root / ir, root / vi
    tried = ", ".join(f"{root / ir} + {vi}" for ir, vi in LAYOUTS[kind])
    raise ReproError(f"--{kind.lower()} {root}: no infrared/visible folders found (tried {tried})")


def read_names(value: object) -> list[str] | None:
    """A list of stems from a YAML list or a text file (one stem per line, # comments allowed)."""
    if value is None:
        return None
    if isinstance(value, list):
        return [str(v) for v in value]
    path = Path(str(value))
    if not path.is_file():
        raise ReproError(f"names file not found: {path}")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [Path(line).stem for line in lines if line]


def collect_sets(args: argparse.Namespace) -> list[PairSet]:
    """The sets named by --sets, --fmb/--msrs/--roadscene and --pairs, in that order."""
    sets: dict[str, PairSet] = {}
    if args.sets is not None:
        try:
            listing = yaml.safe_load(args.sets.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ReproError(f"--sets {args.sets}: {err}") from err
        if not isinstance(listing, dict):
            raise ReproError(f"--sets {args.sets}: expected {{SET: {{ir: DIR, vi: DIR}}}}")
        for name, entry in listing.items():
            if not isinstance(entry, dict) or not {"ir", "vi"} <= set(entry):
                raise ReproError(f"--sets {args.sets}: set {name!r} needs 'ir' and 'vi' folders")
            unknown = set(entry) - {"ir", "vi", "fused", "names", "max_pairs"}
            if unknown:
                raise ReproError(f"--sets {args.sets}: set {name!r} has unknown keys {sorted(unknown)}")
            sets[str(name)] = PairSet(str(name), Path(entry["ir"]), Path(entry["vi"]),
                                      Path(entry["fused"]) if entry.get("fused") else None,
                                      read_names(entry.get("names")), entry.get("max_pairs"))
    for kind in LAYOUTS:
        root = getattr(args, kind.lower())
        if root is not None:
            sets[kind] = PairSet(kind, *locate(kind, Path(root)))
    for name, ir, vi in args.pairs:
        sets[name] = PairSet(name, Path(ir), Path(vi))
    if not sets:
        raise ReproError("no evaluation set: give --fmb/--msrs/--roadscene ROOT, --pairs NAME IR VI or --sets FILE")
    for s in sets.values():
        for folder in (s.ir, s.vi):
            if not folder.is_dir():
                raise ReproError(f"set {s.name}: folder not found: {folder}")
        if s.max_pairs is None:
            s.max_pairs = args.max_pairs
    return list(sets.values())


def published_key(name: str, path: Path) -> str | None:
    """The dataset key of a published-table file (YAML, or CSV with a ``dataset`` column) matching a set name
    case-insensitively, if any."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            if path.suffix.lower() == ".csv":
                keys = {row.get("dataset") or "" for row in csv.DictReader(handle)}
            else:
                keys = set(yaml.safe_load(handle) or {})
    except (OSError, yaml.YAMLError) as err:
        raise ReproError(f"--published {path}: {err}") from err
    return next((str(k) for k in keys if str(k).lower() == name.lower()), None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint to fuse with (train.py's last.pt/best.pt, or a converted release file); "
                             "not needed when every set gives an existing 'fused' folder")
    add_config_args(parser)
    sets = parser.add_argument_group("evaluation sets")
    sets.add_argument("--fmb", type=Path, metavar="ROOT", help="FMB root (its test split is used)")
    sets.add_argument("--msrs", type=Path, metavar="ROOT", help="MSRS root or a folder with ir/ and vi/")
    sets.add_argument("--roadscene", type=Path, metavar="ROOT", help="RoadScene root or a folder with ir/ and vi/")
    sets.add_argument("--pairs", nargs=3, action="append", default=[], metavar=("NAME", "IR_DIR", "VI_DIR"),
                      help="any set of pairs (repeatable)")
    sets.add_argument("--sets", type=Path, metavar="FILE", help="YAML listing the sets (see above)")
    sets.add_argument("--max-pairs", type=int, default=None, metavar="N",
                      help="use the first N pairs (by name) of every set that does not choose its own subset")
    parser.add_argument("--convention", default="paper", choices=["paper", "cddfuse", "tdfusion"],
                        help="how the metrics combine the two sources (default: paper)")
    parser.add_argument("--name", default="UAAFusion", help="name of our row (shown with the suffix ' (ours)')")
    parser.add_argument("--published", type=Path, default=DEFAULT_PUBLISHED,
                        help="published Table I (default: configs/published/table1_fusion.yaml)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                        help="processes for the metrics (0 = in this process)")
    add_common_args(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    out = args.results / "table1"
    sets = collect_sets(args)
    model = None
    if args.checkpoint is not None:
        model = FusionModel(args.checkpoint, args.config, args.overrides, args.device)
    sections: list[Section] = []
    for pair_set in progress(sets, "table1 sets", args.quiet, unit="set"):
        folder = safe_name(pair_set.name)
        ir, vi = subset_pairs(pair_set.ir, pair_set.vi, out / "subsets" / folder,
                              max_pairs=pair_set.max_pairs, names=pair_set.names)
        fused = pair_set.fused
        if fused is None:
            if model is None:
                raise ReproError(f"set {pair_set.name} has no 'fused' folder: give --checkpoint to fuse it")
            fused = out / "fused" / folder
            fused_now = fuse_set(model, ir, vi, fused, results=args.results, force=args.force, quiet=args.quiet)
        else:
            fused_now = False
        means = evaluate_set(ir, vi, fused, out / "metrics" / f"{folder}.json", results=args.results,
                             convention=args.convention, workers=args.workers, force=args.force or fused_now,
                             quiet=args.quiet)
        count = len(pair_names(ir, vi))
        section = Section(f"Table I, {pair_set.name}: {count} pairs, {args.convention} convention",
                          list(FUSION_COLUMNS))
        key = published_key(pair_set.name, args.published)
        if key is not None:
            section.add_published(published_rows(args.published, key))
        section.add(args.name + OURS_SUFFIX, means, "ours")
        sections.append(section)
    meta = {"table": "I", "convention": args.convention, "checkpoint": str(args.checkpoint),
            "sets": {s.name: {"ir": str(s.ir), "vi": str(s.vi),
                              "fused": str(s.fused or out / "fused" / safe_name(s.name)),
                              "max_pairs": s.max_pairs, "names": s.names} for s in sets}}
    write_tables(out / "table1", sections, meta, quiet=args.quiet)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
