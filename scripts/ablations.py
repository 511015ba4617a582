"""Tables III and IV: train every ablation / parameter config, fuse the test split with it, and print the fusion
metrics beside the paper's numbers.

    python -m scripts.ablations                                  # all of Table III and Table IV
    python -m scripts.ablations --tables III                     # Table III only (8 ablations + the full model)
    python -m scripts.ablations --only I VIII K3 S2 --set train.epochs=10
    python -m scripts.ablations --list                           # the units and their config files

Units (ids are case-insensitive):

    Table III   I … VIII  configs/ablations/*.yaml (one switch each), ours = configs/fmb_paper.yaml
    Table IV    K2 … K8   configs/stages/k{K}.yaml (number of stages)
                S1 … S5   configs/substeps/s{S}.yaml (approximation steps k … 5k in Eq. 12)

Units whose resolved configs are identical (ours, K5 and S1 are all the paper's model) are trained once and share
one run. ``--set KEY=VALUE`` applies to every unit (for example ``--set data.root=/data/FMB --set device=cuda``).
Each run is evaluated on the config's validation split (``data.val_split``, the test split in the paper configs),
fused as ``test.py`` fuses, with the metrics in the ``paper`` convention (``--convention``).

Outputs under RESULTS/ablations/:

    runs/<ID>/              train.py's run folder (config.yaml, last.pt, best.pt, tb/) and _done.json when
                            finished; an interrupted run is resumed from last.pt
    fused/<ID>/             the fused test images
    metrics/<ID>.json/.csv  per-image and mean metrics
    ablations.md/.json/.csv ours beside the paper: Table III, Table IV (stages), Table IV (approximation steps)

Finished units are skipped on a re-run (``--force`` redoes the selected ones).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.repro_common import (
    FUSION_COLUMNS,
    OURS_SUFFIX,
    PUBLISHED_DIR,
    FusionModel,
    ReproError,
    add_common_args,
    config_fingerprint,
    evaluate_set,
    fuse_set,
    load_run_config,
    progress,
    run_cli,
    say,
    subset_pairs,
    train_config,
)
from scripts.repro_tables import Section, published_rows, write_tables

REPO_ROOT = Path(__file__).resolve().parents[1]

CONFIGS = REPO_ROOT / "configs"
TABLE3_PUBLISHED = PUBLISHED_DIR / "table3_ablation.yaml"
TABLE4_PUBLISHED = PUBLISHED_DIR / "table4_parameters.yaml"


@dataclass(frozen=True)
class Unit:
    """One row to reproduce: its id, the table section, the published row it compares with, its config."""

    uid: str
    section: str  # "III", "IV-K" or "IV-S"
    row: str
    config: Path


UNITS: tuple[Unit, ...] = (
    Unit("I", "III", "I w/o att", CONFIGS / "ablations" / "i_no_attention.yaml"),
    Unit("II", "III", "II IG->Grad", CONFIGS / "ablations" / "ii_grad_attention.yaml"),
    Unit("III", "III", "III w/o L_int", CONFIGS / "ablations" / "iii_no_intensity.yaml"),
    Unit("IV", "III", "IV w/o L_grad", CONFIGS / "ablations" / "iv_no_gradient.yaml"),
    Unit("V", "III", "V w/o m_s", CONFIGS / "ablations" / "v_no_short_memory.yaml"),
    Unit("VI", "III", "VI w/o m_l", CONFIGS / "ablations" / "vi_no_long_memory.yaml"),
    Unit("VII", "III", "VII w/o m_s+m_l", CONFIGS / "ablations" / "vii_no_memory.yaml"),
    Unit("VIII", "III", "VIII L_seg=CE(I_f)", CONFIGS / "ablations" / "viii_seg_fused_only.yaml"),
    Unit("ours", "III", "Ours", CONFIGS / "fmb_paper.yaml"),
    *(Unit(f"K{k}", "IV-K", f"K={k}", CONFIGS / "stages" / f"k{k}.yaml") for k in range(2, 9)),
    *(Unit(f"S{s}", "IV-S", "k" if s == 1 else f"{s}k", CONFIGS / "substeps" / f"s{s}.yaml") for s in range(1, 6)),
)
SECTIONS = {
    "III": ("Table III: ablations (FMB test split)", TABLE3_PUBLISHED, "FMB"),
    "IV-K": ("Table IV: number of stages K", TABLE4_PUBLISHED, "stages"),
    "IV-S": ("Table IV: approximation steps in Eq. 12", TABLE4_PUBLISHED, "approximation_steps"),
}


def select_units(only: list[str] | None, tables: list[str]) -> list[Unit]:
    """Units chosen by ``--only`` ids, else by ``--tables``, in registry order."""
    if only:
        wanted = {u.lower() for u in only}
        known = {u.uid.lower() for u in UNITS}
        unknown = sorted(wanted - known)
        if unknown:
            raise ReproError(f"unknown unit id(s) {unknown}; known: {', '.join(u.uid for u in UNITS)}")
        return [u for u in UNITS if u.uid.lower() in wanted]
    return [u for u in UNITS if u.section.split("-")[0] in tables]


def eval_folders(cfg: dict, args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """Infrared / visible folders of the evaluation split (``--eval-ir/--eval-vi`` or the config's val split)."""
    from data.datasets import build_dataset

    if args.eval_ir is not None or args.eval_vi is not None:
        if args.eval_ir is None or args.eval_vi is None:
            raise ReproError("give both --eval-ir and --eval-vi")
        ir, vi = args.eval_ir, args.eval_vi
    else:
        data = cfg["data"]
        keys = ("name", "root", "ir_dir", "vi_dir", "ignore_index", "num_classes")
        spec = {k: data[k] for k in keys if data[k] is not None}
        try:
            dataset = build_dataset({**spec, "labels": False, "scan_labels": False}, data["val_split"], mode="full")
        except (ValueError, FileNotFoundError) as err:
            raise ReproError(f"evaluation split '{data['val_split']}' of {data['root']}: {err}") from err
        ir, vi = dataset.ir_dir, dataset.vi_dir
    return subset_pairs(ir, vi, out / "subsets" / "eval", max_pairs=args.max_pairs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", default=["III", "IV"], choices=["III", "IV"],
                        help="tables to reproduce (default both)")
    parser.add_argument("--only", nargs="+", metavar="ID", help="only these units (e.g. I VIII K3 S2 ours)")
    parser.add_argument("--list", action="store_true", help="list the units and exit")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every unit (repeatable)")
    parser.add_argument("--checkpoint", default="last.pt", choices=["last.pt", "best.pt"],
                        help="which checkpoint of each run is evaluated (default: the final one)")
    parser.add_argument("--eval-ir", type=Path, help="evaluate on these infrared images instead of the val split")
    parser.add_argument("--eval-vi", type=Path, help="… and these visible images")
    parser.add_argument("--max-pairs", type=int, default=None, metavar="N", help="evaluate the first N pairs only")
    parser.add_argument("--convention", default="paper", choices=["paper", "cddfuse", "tdfusion"])
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                        help="processes for the metrics (0 = in this process)")
    add_common_args(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    units = select_units(args.only, args.tables)
    if args.list:
        for unit in UNITS:
            print(f"{unit.uid:5s} Table {unit.section:5s} {unit.row:20s} {unit.config.relative_to(REPO_ROOT)}")
        return 0
    out = args.results / "ablations"
    configs = {u.uid: load_run_config(u.config, args.overrides, args.device) for u in units}
    canonical: dict[str, str] = {}  # fingerprint → the id whose run folder serves every identical config
    forced: set[str] = set()
    means: dict[str, dict[str, float]] = {}
    for unit in progress(units, "ablation units", args.quiet, unit="unit"):
        cfg = configs[unit.uid]
        run_id = canonical.setdefault(config_fingerprint(cfg), unit.uid)
        if run_id != unit.uid:
            say(f"{unit.uid}: same config as {run_id}; its run is reused")
        force = args.force and run_id not in forced
        forced.add(run_id)
        say(f"{unit.uid} ({unit.row}): {unit.config.relative_to(REPO_ROOT)}")
        checkpoint = train_config(cfg, out / "runs" / run_id, results=args.results, force=force, quiet=args.quiet,
                                  checkpoint=args.checkpoint)
        ir, vi = eval_folders(cfg, args, out)
        model = FusionModel(checkpoint, device=args.device)
        fused_now = fuse_set(model, ir, vi, out / "fused" / run_id, results=args.results, force=force,
                             quiet=args.quiet)
        means[unit.uid] = evaluate_set(ir, vi, out / "fused" / run_id, out / "metrics" / f"{run_id}.json",
                                       results=args.results, convention=args.convention, workers=args.workers,
                                       force=force or fused_now, quiet=args.quiet)
    sections = []
    for key, (title, published, dataset) in SECTIONS.items():
        chosen = [u for u in units if u.section == key]
        if not chosen:
            continue
        section = Section(f"{title}, {args.convention} convention", list(FUSION_COLUMNS))
        section.add_published(published_rows(published, dataset))
        for unit in chosen:
            section.add(unit.row + OURS_SUFFIX, means[unit.uid], "ours")
        sections.append(section)
    meta = {"tables": "III, IV", "convention": args.convention, "overrides": args.overrides,
            "units": {u.uid: {"row": u.row, "config": str(u.config.relative_to(REPO_ROOT)),
                              "run": canonical[config_fingerprint(configs[u.uid])]} for u in units}}
    write_tables(out / "ablations", sections, meta, quiet=args.quiet)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
