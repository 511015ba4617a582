"""Compare a checkpoint with the sources and a published method on labelled real scenes (docs/RESULTS.md).

    python -m scripts.real_results --checkpoint checkpoints/uaafusion_mfnet.pt \\
        --data ../shared/data/MSRS_labelled --out results/mfnet_tone_msrs \\
        --figure docs/figures/mfnet_tone_msrs_comparison.png

The folder holds ``ir/``, ``vi/``, ``label/`` and optionally published outputs of other methods (``--method
NAME=SUBFOLDER``, default ``SeAFusion=SeAFusion`` when that folder exists). It writes:

- ``OUT/fused/`` (our colour outputs) and ``OUT/fused/maps/`` (w_ir, w_vi, attention per stage, the regions);
- ``OUT/results.md`` and ``OUT/results.json``: the fusion metrics (paper convention) of infrared, visible, their
  average, each published method and ours; per-class IoU and mIoU (over the defined classes, and over the classes
  the labels show) of the checkpoint's own jointly trained segmenter when it segments each of those images (its
  luminance) against the labels, and of the regions the attribution used at inference; and how far the
  attribution weights move from 0.5 (regions per scene, share of pixels with |w_ir - 0.5| > 0.05);
- ``--figure``: for ``--count`` scenes (or ``--names``), infrared, visible, each method, ours, the regions, w_ir
  and the last stage's attention map.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.io import luminance, read_image, read_label
from data.layouts import MFNET_CLASSES
from engine.checkpoint import CheckpointError, load_model_from_checkpoint
from engine.fuse_folder import FuseSettings, fuse_folder
from engine.runtime import prepare_process, resolve_device
from metrics.evaluate import evaluate_folders
from metrics.report import format_table
from metrics.segmentation import class_scores, confusion_matrix
from models.segmenter import segment
from utils.atomic import atomic_write_text, save_figure

OURS = "UAAFusion (ours)"
REGIONS = "inference regions (on I^(0))"
METRICS = ("EN", "SF", "CC", "VIF", "Qabf", "SSIM")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, type=Path, help="folder with ir/, vi/, label/ (and published outputs)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--method", action="append", default=None, metavar="NAME=SUBFOLDER",
                   help="a published method's outputs inside --data (default: SeAFusion=SeAFusion if present)")
    p.add_argument("--figure", type=Path, default=None, help="write the comparison figure here")
    p.add_argument("--names", nargs="*", default=None, help="scenes for the figure (default: --count of them)")
    p.add_argument("--count", type=int, default=3, help="scenes in the figure when --names is not given")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def published_methods(data: Path, given: list[str] | None) -> dict[str, Path]:
    if given is None:
        return {"SeAFusion": data / "SeAFusion"} if (data / "SeAFusion").is_dir() else {}
    methods = {}
    for item in given:
        name, _, folder = item.partition("=")
        if not folder:
            raise ValueError(f"--method {item!r}: use NAME=SUBFOLDER")
        methods[name] = data / folder
        if not methods[name].is_dir():
            raise FileNotFoundError(f"--method {name}: folder not found: {methods[name]}")
    return methods


def iou_summary(confusion: np.ndarray) -> dict:
    """Per-class IoU (None where undefined), mIoU over the defined classes, and mIoU over the classes present in the
    labels (``miou_present``: a class the labels never show counts only through its false positives elsewhere)."""
    _, iou = class_scores(confusion)
    present = confusion.sum(axis=1) > 0
    return {"iou": [None if not np.isfinite(v) else float(v) for v in iou],
            "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "miou_present": float(np.nanmean(iou[present])) if present.any() else float("nan")}


def segmentation_scores(model, images: dict[str, dict[str, Path | np.ndarray]], labels: dict[str, Path],
                        num_classes: int, ignore_index: int, device: torch.device) -> dict[str, dict]:
    """Per image kind: per-class IoU and mIoU of the model's segmenter on that image's luminance."""
    model.eval()
    out = {}
    for kind, per_scene in images.items():
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        for name, label_path in labels.items():
            source = per_scene[name]
            image = source if isinstance(source, np.ndarray) else luminance(read_image(source))
            tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
            pred = segment(model.segmenter, tensor).argmax(dim=1)[0].cpu().numpy()
            confusion += confusion_matrix(pred, read_label(label_path), num_classes, ignore_index)
        out[kind] = iou_summary(confusion)
    return out


def region_scores(maps: Path, labels: dict[str, Path], num_classes: int, ignore_index: int) -> dict:
    """IoU of the regions the attribution used (``maps/NAME_regions.png``, written by ``--save-maps``)."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for name, label_path in labels.items():
        confusion += confusion_matrix(read_label(maps / f"{name}_regions.png"), read_label(label_path), num_classes,
                                      ignore_index)
    return iou_summary(confusion)


def attribution_statistics(maps: Path, names: list[str], threshold: float = 0.05) -> dict:
    """How much the class-wise attribution steers: per scene the number of regions (distinct classes in the
    region map), the share of pixels with |w_ir - 0.5| > ``threshold`` and the mean |w_ir - 0.5|; their means and
    the range of w_ir over all scenes."""
    per_scene = {}
    low, high = 1.0, 0.0
    for name in names:
        w_ir = np.load(maps / f"{name}_w_ir.npy").astype(np.float64)
        regions = read_label(maps / f"{name}_regions.png")
        off = np.abs(w_ir - 0.5)
        per_scene[name] = {"regions": int(np.unique(regions).size), "share_off": float((off > threshold).mean()),
                           "mean_abs_off": float(off.mean())}
        low, high = min(low, float(w_ir.min())), max(high, float(w_ir.max()))
    means = {key: float(np.mean([s[key] for s in per_scene.values()])) for key in ("regions", "share_off",
                                                                                   "mean_abs_off")}
    return {"threshold": threshold, "means": means, "w_ir_range": [low, high], "per_scene": per_scene}


def class_attribution_statistics(maps: Path, names: list[str], class_names: list[str],
                                 threshold: float = 0.05) -> dict[str, dict]:
    """Per class, how the attribution weighted its regions: the scenes whose region map shows it, and of those the
    ones whose region's w_ir (its median) is above 0.5 + ``threshold`` (favours infrared), below 0.5 − ``threshold``
    (favours visible) or neither; the mean of those medians and the share of the class's pixels with
    |w_ir − 0.5| > ``threshold``. Where every scene has ``NAME_attribution.json`` (``test.py --save-maps``),
    ``no_source`` counts the scenes whose region had a_ir ≤ 0 and a_vi ≤ 0 (w_ir = 0.5 by Eq. 8's ReLU), else it
    is None. Classes no scene shows are left out."""
    found: dict[int, list[float]] = {}
    pixels: dict[int, list[int]] = {}
    records = [maps / f"{name}_attribution.json" for name in names]
    with_records = all(path.is_file() for path in records)
    no_source: dict[int, int] = {}
    for name, record in zip(names, records):
        w_ir = np.load(maps / f"{name}_w_ir.npy").astype(np.float64)
        regions = read_label(maps / f"{name}_regions.png")
        for c in np.unique(regions):
            if not 0 <= c < len(class_names):
                continue
            inside = w_ir[regions == c]
            found.setdefault(int(c), []).append(float(np.median(inside)))
            off = pixels.setdefault(int(c), [0, 0])
            off[0] += int((np.abs(inside - 0.5) > threshold).sum())
            off[1] += int(inside.size)
        if with_records:
            for region in json.loads(record.read_text())["regions"]:
                if region["a_ir"] <= 0 and region["a_vi"] <= 0:
                    no_source[region["class"]] = no_source.get(region["class"], 0) + 1
    out = {}
    for c in sorted(found):
        medians = np.array(found[c])
        out[class_names[c]] = {"scenes": int(medians.size), "ir": int((medians > 0.5 + threshold).sum()),
                               "vi": int((medians < 0.5 - threshold).sum()),
                               "neither": int((np.abs(medians - 0.5) <= threshold).sum()),
                               "no_source": no_source.get(c, 0) if with_records else None,
                               "mean_w_ir": float(medians.mean()), "pixel_share_off": pixels[c][0] / pixels[c][1]}
    return out


def class_attribution_table(per_class: dict[str, dict], threshold: float = 0.05) -> str:
    """:func:`class_attribution_statistics` as a markdown table with a caption."""
    lines = [f"Attribution weights per class: scenes whose region of the class has its median w_ir above "
             f"{0.5 + threshold:g}, below {0.5 - threshold:g} or within {threshold:g} of 0.5, and of all its scenes "
             "those where neither source raised the class score above the black image's (a_ir, a_vi <= 0, so "
             f"w_ir = 0.5 by Eq. 8); the mean of the medians; the share of the class's pixels with "
             f"|w_ir - 0.5| > {threshold:g}", "",
             "| class | scenes | favours ir | favours vi | about 0.5 | a_ir, a_vi <= 0 | mean w_ir | pixels off 0.5 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in per_class.items():
        no_source = "–" if c.get("no_source") is None else str(c["no_source"])
        lines.append(f"| {name} | {c['scenes']} | {c['ir']} | {c['vi']} | {c['neither']} | {no_source} | "
                     f"{c['mean_w_ir']:.2f} | {100 * c['pixel_share_off']:.0f} % |")
    return "\n".join(lines) + "\n"


def comparison_figure(path: Path, names: list[str], data: Path, methods: dict[str, Path], fused: Path) -> None:
    """Rows: scenes; columns: infrared, visible, each method, ours, the regions the segmenter found on I^(0) (when
    the maps hold them), w_ir, the last stage's attention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_regions = all((fused / "maps" / f"{name}_regions_color.png").is_file() for name in names)
    columns = ["infrared", "visible", *methods, OURS, *(["regions (segmenter)"] if with_regions else []),
               "w_ir (attribution weight)", "attention, last stage"]
    fig, axes = plt.subplots(len(names), len(columns), figsize=(2.6 * len(columns), 2.1 * len(names) + 0.4),
                             squeeze=False)
    for row, name in enumerate(names):
        attention = sorted((fused / "maps").glob(f"{name}_att*.npy"), key=lambda p: int(p.stem.split("att")[-1]))
        panels = [read_image(_find(data / "ir", name)), read_image(_find(data / "vi", name)),
                  *(read_image(_find(folder, name)) for folder in methods.values()),
                  read_image(_find(fused, name)),
                  *([read_image(fused / "maps" / f"{name}_regions_color.png")] if with_regions else []),
                  np.load(fused / "maps" / f"{name}_w_ir.npy"), np.load(attention[-1]) if attention else None]
        for col, (title, panel) in enumerate(zip(columns, panels)):
            ax = axes[row][col]
            ax.axis("off")
            if row == 0:
                ax.set_title(title, fontsize=9)
            if panel is None:
                continue
            if title.startswith("w_ir"):
                shown = ax.imshow(panel, cmap="inferno", vmin=0, vmax=1)
            elif title.startswith("attention"):
                shown = ax.imshow(panel, cmap="coolwarm", vmin=-np.abs(panel).max(), vmax=np.abs(panel).max())
            else:
                ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1)
                shown = None
            if shown is not None:
                fig.colorbar(shown, ax=ax, fraction=0.035, pad=0.02)
        axes[row][0].text(-0.04, 0.5, name, transform=axes[row][0].transAxes, rotation=90, va="center",
                          ha="right", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def _find(folder: Path, name: str) -> Path:
    matches = sorted(p for p in folder.glob(f"{name}.*") if p.is_file())
    if not matches:
        raise FileNotFoundError(f"no image named '{name}.*' in {folder}")
    return matches[0]


def run(args: argparse.Namespace) -> int:
    prepare_process(args.threads)
    device = resolve_device(args.device)
    data, out = args.data, args.out
    for sub in ("ir", "vi", "label"):
        if not (data / sub).is_dir():
            raise FileNotFoundError(f"{data / sub} not found (expected {data}/{{ir,vi,label}})")
    methods = published_methods(data, args.method)
    model, payload = load_model_from_checkpoint(args.checkpoint, device=device)
    cfg = payload["config"]
    num_classes = model.num_classes
    class_names = payload.get("class_names") or (list(MFNET_CLASSES) if num_classes == 9 else
                                                 [f"class{i}" for i in range(num_classes)])

    fused = out / "fused"
    report = fuse_folder(model, data / "ir", data / "vi", fused,
                         FuseSettings(save_maps=True, show_progress=not args.quiet), device=device)
    if not report.written:
        raise RuntimeError(f"nothing was fused from {data}")

    fusion = evaluate_folders(data / "ir", data / "vi", {**{k: str(v) for k, v in methods.items()},
                                                         OURS: str(fused)},
                              convention="paper", references=True, progress=not args.quiet)
    rows = fusion.comparison().means
    fusion_md = format_table(rows, list(METRICS), style="markdown", decimals=3, rank_rows=[*methods, OURS],
                             caption=f"Fusion metrics on {len(fusion.per_image.get(OURS, {}))} scenes of {data.name} "
                                     "(paper convention)")

    labels = {p.stem: p for p in sorted((data / "label").iterdir()) if p.is_file()}
    labels = {k: v for k, v in labels.items() if k in report.written}
    images: dict[str, dict] = {"infrared": {}, "visible": {}, "average": {}}
    for name in labels:
        ir, vi = luminance(read_image(_find(data / "ir", name))), luminance(read_image(_find(data / "vi", name)))
        images["infrared"][name], images["visible"][name], images["average"][name] = ir, vi, 0.5 * (ir + vi)
    for method, folder in {**methods, OURS: fused}.items():
        images[method] = {name: _find(folder, name) for name in labels}
    ignore_index = cfg["data"]["ignore_index"]
    seg = segmentation_scores(model, images, labels, num_classes, ignore_index, device)
    seg[REGIONS] = region_scores(fused / "maps", labels, num_classes, ignore_index)
    seg_rows = {kind: {**{class_names[c]: s["iou"][c] if s["iou"][c] is not None else float("nan")
                          for c in range(num_classes)}, "mIoU": s["miou"], "mIoU (present)": s["miou_present"]}
                for kind, s in seg.items()}
    seg_md = format_table(seg_rows, [*class_names, "mIoU", "mIoU (present)"], style="markdown", decimals=3,
                          caption="IoU of the checkpoint's jointly trained segmenter on each image kind, and of the "
                                  "regions the attribution used at inference (its prediction on I^(0))")
    attribution = attribution_statistics(fused / "maps", sorted(labels))
    stats = attribution["means"]
    attribution_md = (f"\nAttribution at inference ({len(labels)} scenes): {stats['regions']:.1f} regions per scene, "
                      f"{100 * stats['share_off']:.1f} % of pixels with |w_ir - 0.5| > {attribution['threshold']}, "
                      f"mean |w_ir - 0.5| {stats['mean_abs_off']:.3f}, w_ir in "
                      f"[{attribution['w_ir_range'][0]:.3f}, {attribution['w_ir_range'][1]:.3f}]\n")
    attribution["per_class"] = class_attribution_statistics(fused / "maps", sorted(labels), class_names)
    attribution_md += "\n" + class_attribution_table(attribution["per_class"])

    names = args.names or sorted(labels)[:: max(len(labels) // max(args.count, 1), 1)][:args.count]
    if args.figure:
        comparison_figure(args.figure, names, data, methods, fused)
    document = {"checkpoint": str(args.checkpoint), "data": str(data), "scenes": sorted(labels),
                "fusion_means": rows, "fusion_per_image": fusion.per_image, "segmentation": seg,
                "attribution": attribution,
                "class_names": class_names, "figure": str(args.figure) if args.figure else None,
                "figure_scenes": names, "failed": report.failed}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(_clean(document), indent=1))
    atomic_write_text(out / "results.md", fusion_md + "\n" + seg_md + attribution_md)
    print(fusion_md + "\n" + seg_md + attribution_md)
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}" + (f", {args.figure}" if args.figure else ""))
    return 0 if report.ok else 1


def _clean(value):
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (CheckpointError, OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
