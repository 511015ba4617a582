"""Per-step training losses of two or more runs side by side, from their TensorBoard logs (docs/PERFORMANCE.md).

    python -m scripts.compare_runs runs/eager runs/compiled                 # loss/total of every logged step
    python -m scripts.compare_runs runs/eager runs/compiled --tag loss/int --markdown

Prints one row per step logged by every run (``train.log_every``), the runs' values, and the largest absolute
and relative difference of each run from the first. The last line is a JSON record of those maxima. Steps that
only some runs logged are left out (their count is said).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """{step: value} of ``tag`` in the TensorBoard event files under ``run_dir/tb`` (or ``run_dir``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run_dir / "tb" if (run_dir / "tb").is_dir() else run_dir
    if not any(folder.glob("events.out.tfevents.*")):
        raise FileNotFoundError(f"{run_dir}: no TensorBoard event file in {folder} (was it written by train.py?)")
    values: dict[int, float] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):  # a resumed run writes several files
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    if not values:
        raise KeyError(f"{run_dir}: no scalar '{tag}' logged")
    return values


def compare(series: list[dict[int, float]]) -> tuple[list[int], list[dict[str, float]], int]:
    """(common steps, per run after the first its max abs and relative difference from the first, steps left
    out because not every run logged them)."""
    common = sorted(set.intersection(*(set(s) for s in series)))
    left_out = len(set.union(*(set(s) for s in series))) - len(common)
    first = series[0]
    diffs = []
    for other in series[1:]:
        abs_diff = [abs(other[s] - first[s]) for s in common]
        rel_diff = [d / abs(first[s]) if first[s] else float("inf") if d else 0.0 for d, s in zip(abs_diff, common)]
        diffs.append({"max_abs_diff": max(abs_diff, default=0.0), "max_rel_diff": max(rel_diff, default=0.0)})
    return common, diffs, left_out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (train.py --run-dir); the first is the reference")
    p.add_argument("--tag", default="loss/total", help="TensorBoard scalar (loss/total, loss/int, loss/grad, ...)")
    p.add_argument("--markdown", action="store_true", help="a markdown table instead of aligned columns")
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        p.error("give at least two run folders")
    try:
        series = [read_scalars(run, args.tag) for run in args.runs]
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    steps, diffs, left_out = compare(series)
    names = [run.name for run in args.runs]
    if args.markdown:
        print("| step | " + " | ".join(names) + " |")
        print("|---:|" + "---:|" * len(names))
        for s in steps:
            print(f"| {s} | " + " | ".join(f"{run[s]:.6f}" for run in series) + " |")
    else:
        print("step".rjust(6) + "".join(name[:18].rjust(20) for name in names))
        for s in steps:
            print(f"{s:6d}" + "".join(f"{run[s]:20.6f}" for run in series))
    for name, d in zip(names[1:], diffs):
        print(f"{name} against {names[0]}: max abs diff {d['max_abs_diff']:.3g}, max rel diff {d['max_rel_diff']:.3g}")
    if left_out:
        print(f"({left_out} step(s) not logged by every run left out)")
    print(json.dumps({"tag": args.tag, "steps": len(steps), "runs": names,
                      "differences": dict(zip(names[1:], diffs))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
