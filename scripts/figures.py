"""Figures 3 and 4 of the paper, and the per-stage outputs, for chosen images.

    python -m scripts.figures --checkpoint runs/fmb/last.pt --data-root datasets/FMB --names 00524 00703 00920
    python -m scripts.figures --checkpoint CKPT --ir IR_DIR --vi VI_DIR [--labels LABEL_DIR] --count 3
    python -m scripts.figures --checkpoint CKPT --data-root datasets/FMB --names 00122 00997 \\
        --classes road sidewalk car person

For every image (RESULTS/figures/<NAME>_*):

- ``fig3``: Figure 3, the class-wise attribution weights (Eq. 5–8): infrared, visible, fused image, the class
  regions they were computed on, and w_ir, w_vi (on the [0, 1] scale). ``fig3.json`` lists each region's pixels,
  attributions a_ir, a_vi and weights.
- ``fig4``: Figure 4, attribution-attention maps (Eq. 9–12): the total map, and one map per class, which is the
  same path attribution with Eq. 9's score restricted to that class's region (every other pixel ignored). By
  linearity the class maps add up to the total. ``fig4.npz`` holds these maps (float32), the regions, the
  stage outputs and the attention maps the network used (``total`` equals ``used_attention[stage - 1]`` for
  stages 1..K).
- ``stages``: the stage outputs I^(0) … I^(K) and the attention map each stage used, A^(1) … A^(K).

Regions are the segmenter's prediction on I^(0), as at inference (``--regions predicted``, default), or the
ground-truth labels (``--regions labels``, as in training; needs label files). The attention shown in Figure 4 is
the one stage ``--stage`` used (default K, the last stage; ``K+1`` adds the final segment I^(K-1) → I^(K)).
Attention maps are drawn on a symmetric colour scale around 0, each map scaled to its own largest magnitude.

An image whose three PNGs exist is skipped on a re-run (``--force`` redraws it).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch

if not __package__:  # run by path (python scripts/NAME.py): put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.fuse_folder import region_attributions
from scripts.repro_common import (
    FusionModel,
    ReproError,
    add_common_args,
    add_config_args,
    json_safe,
    progress,
    remove_output,
    run_cli,
    say,
    warn,
)
from utils.atomic import save_figure

plt.switch_backend("Agg")  # files only, no display
REPO_ROOT = Path(__file__).resolve().parents[1]

OUTPUTS = ("fig3.png", "fig4.png", "stages.png")


@dataclass
class ImageMaps:
    """Everything drawn for one image, cropped to its size. Images (H, W) float32; regions (H, W) int64."""

    name: str
    ir: np.ndarray
    vi_rgb: np.ndarray
    fused_rgb: np.ndarray
    regions: np.ndarray
    w_ir: np.ndarray
    w_vi: np.ndarray
    a_ir: np.ndarray
    a_vi: np.ndarray
    path: list[np.ndarray]
    used_attention: list[np.ndarray]
    total: np.ndarray
    per_class: dict[int, np.ndarray]
    stage: int


# -------------------------------------------------------------------------------------------------- compute


def class_attention(model: Any, path: list[torch.Tensor], regions: torch.Tensor, classes: list[int | None],
                    mask: torch.Tensor | None) -> list[torch.Tensor]:
    """Path attention over ``path`` = [I^(0), …, I^(k-1)] with Eq. 9's score restricted to each of ``classes``.

    Args:
        model: the UAAFusion model (its scoring segmenter and attribution settings are used).
        path: stage outputs (N, 1, H, W), the ones the requested stage had seen.
        regions: (N, H, W) region map the network used.
        classes: class indices; None means every region (the total map).
        mask: the release profile's score mask (N, C, H, W) (``attention_score: masked_mean``), else None.

    Returns:
        One (N, 1, H, W) map per entry of ``classes``.
    """
    from models.attribution import PathAttention, masked_mean_score_fn, region_score_fn

    settings = model.attribution
    scoring = model.scoring_model()
    maps = []
    for cls in classes:
        if settings.attention_score == "region":
            kept = regions if cls is None else torch.where(regions == cls, regions,
                                                           torch.full_like(regions, settings.ignore_index))
            score_fn = region_score_fn(scoring, kept, model.num_classes, settings.score_activation,
                                       settings.ignore_index)
        else:
            assert mask is not None
            kept_mask = mask if cls is None else mask * (regions == cls).unsqueeze(1).to(mask.dtype)
            score_fn = masked_mean_score_fn(scoring, kept_mask, settings.score_activation)
        attention = PathAttention(score_fn, settings.attention, settings.attention_substeps,
                                  settings.attention_reduction)
        attention.start(path[0])
        for image in path[1:]:
            attention.observe(image)
        maps.append(attention.map_for_next_stage())
    return maps


def compute_maps(model: Any, ir_path: Path, vi_path: Path, label_path: Path | None, stage: int | None,
                 class_choice: list[int] | None, max_classes: int, device: torch.device,
                 output: str = "clamp") -> ImageMaps:
    """Fuse one pair and compute every map the figures show (see the module docstring).

    ``output`` turns the fused image into display values as test.py does (``clamp`` or ``stretch``).
    """
    from data.io import float_to_uint8, load_fusion_pair, read_label, recombine_color
    from engine.inference import pad_inputs
    from models.attribution import apply_score_activation, region_one_hot

    sample = load_fusion_pair(ir_path, vi_path)
    ir = torch.from_numpy(sample["ir"])[None, None].to(device)
    vi = torch.from_numpy(sample["vi_y"])[None, None].to(device)
    labels = None
    settings = model.attribution
    if label_path is not None:
        label = torch.from_numpy(read_label(label_path))
        if tuple(label.shape) != tuple(ir.shape[-2:]):
            raise ReproError(f"label {label_path} is {label.shape[1]}x{label.shape[0]}, image is "
                             f"{ir.shape[-1]}x{ir.shape[-2]}")
        labels = torch.where((label >= 0) & (label < model.num_classes), label, settings.ignore_index)[None]
        labels = labels.to(device)
    ir_p, vi_p, labels, (h, w) = pad_inputs(model, ir, vi, labels)
    with torch.no_grad():
        out = model(ir_p, vi_p, labels)
    k_stages = len(out.stages)
    stage = k_stages if stage is None else stage
    if not 1 <= stage <= k_stages + 1:
        raise ReproError(f"--stage must be 1..{k_stages + 1} for this {k_stages}-stage model, got {stage}")
    path = [out.initial, *out.stages][:stage]
    mask = None
    if settings.attention_score != "region":
        if labels is None:
            with torch.no_grad():
                mask = apply_score_activation(model.scoring_model()(out.initial), settings.score_activation)
        else:
            mask = region_one_hot(labels, model.num_classes, settings.ignore_index, ir.dtype)
    regions = out.regions[0, :h, :w].cpu().numpy()
    present, counts = np.unique(regions[regions != settings.ignore_index], return_counts=True)
    if class_choice is None:
        order = [int(c) for c in present[np.argsort(-counts, kind="stable")] if c != 0]  # class 0: unlabeled
        classes = order[:max_classes]
    else:
        classes = [c for c in class_choice if c in present]
        absent = [c for c in class_choice if c not in present]
        if absent:
            warn(f"{sample['name']}: class(es) {absent} have no region in this image; not drawn")
    maps = class_attention(model, path, out.regions, [None, *classes], mask)

    def crop(t: torch.Tensor) -> np.ndarray:
        return t[0, 0, :h, :w].detach().float().cpu().numpy()

    fused = float_to_uint8(crop(out.fused), output).astype(np.float32) / 255.0
    vi_rgb = recombine_color(sample["vi_y"], sample["vi_crcb"])
    fused_rgb = recombine_color(fused, sample["vi_crcb"])
    a_ir = out.a_ir[0] if out.a_ir.dim() == 2 else out.a_ir
    a_vi = out.a_vi[0] if out.a_vi.dim() == 2 else out.a_vi
    return ImageMaps(
        name=sample["name"], ir=sample["ir"], vi_rgb=vi_rgb, fused_rgb=fused_rgb, regions=regions,
        w_ir=crop(out.w_ir), w_vi=crop(out.w_vi), a_ir=a_ir.cpu().numpy(), a_vi=a_vi.cpu().numpy(),
        path=[crop(t) for t in [out.initial, *out.stages]], used_attention=[crop(a) for a in out.attention],
        total=crop(maps[0]), per_class={c: crop(m) for c, m in zip(classes, maps[1:])}, stage=stage,
    )


# ----------------------------------------------------------------------------------------------------- draw


def palette(num_classes: int) -> np.ndarray:
    """(C, 3) float RGB class colours: the road-scene palette for up to 15 classes, tab20 beyond."""
    from data.layouts import LABEL_COLORS

    if num_classes <= len(LABEL_COLORS):
        return LABEL_COLORS[:num_classes].astype(np.float32) / 255.0
    return np.array([plt.get_cmap("tab20")(i % 20)[:3] for i in range(num_classes)], dtype=np.float32)


def show(ax: Any, image: np.ndarray, title: str, **kwargs: Any) -> Any:
    """Draw one panel without axes."""
    handle = ax.imshow(image, cmap=kwargs.pop("cmap", "gray" if image.ndim == 2 else None), **kwargs)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return handle


def show_attention(ax: Any, values: np.ndarray, title: str) -> Any:
    """A signed map on a symmetric scale around 0 (each map scaled to its own largest magnitude)."""
    largest = float(np.abs(values).max())
    limit = largest or 1.0  # an all-zero map (stage 1) is drawn as flat white
    return show(ax, values, f"{title}\n(max |A| {largest:.2e})", cmap="RdBu_r", vmin=-limit, vmax=limit)


def region_image(regions: np.ndarray, colours: np.ndarray, ignore_index: int) -> np.ndarray:
    """(H, W) indices → (H, W, 3) colours (ignored pixels white)."""
    image = np.ones((*regions.shape, 3), dtype=np.float32)
    valid = (regions >= 0) & (regions < len(colours)) & (regions != ignore_index)
    image[valid] = colours[regions[valid]]
    return image


def draw_figure3(maps: ImageMaps, class_names: list[str], ignore_index: int, path: Path) -> dict[str, Any]:
    """Figure 3 panel; returns the per-region numbers written to the JSON beside it."""
    colours = palette(len(class_names))
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.2))
    show(axes[0, 0], maps.ir, "infrared")
    show(axes[0, 1], maps.vi_rgb, "visible")
    show(axes[0, 2], maps.fused_rgb, "fused")
    show(axes[1, 0], region_image(maps.regions, colours, ignore_index), "regions")
    handle = show(axes[1, 1], maps.w_ir, "w_ir (infrared weight)", cmap="viridis", vmin=0.0, vmax=1.0)
    show(axes[1, 2], maps.w_vi, "w_vi (visible weight)", cmap="viridis", vmin=0.0, vmax=1.0)
    fig.colorbar(handle, ax=axes[1, 1:].tolist(), fraction=0.025)
    present = np.unique(maps.regions[maps.regions != ignore_index])
    patches = [Patch(color=colours[c], label=class_names[c]) for c in present]
    axes[1, 0].legend(handles=patches, loc="upper left", bbox_to_anchor=(0.0, -0.02), ncol=3, fontsize=7,
                      frameon=False)
    fig.suptitle(f"Figure 3: attribution weights, {maps.name}", fontsize=11)
    save_figure(fig, path, dpi=120, bbox_inches="tight")
    regions = {}
    for entry in region_attributions(maps.regions, maps.a_ir, maps.a_vi, maps.w_ir):  # ignore_index: not a class
        c = entry.pop("class")
        regions[class_names[c]] = {"index": c, **entry, "w_vi": float(maps.w_vi[maps.regions == c].mean())}
    return regions


def draw_figure4(maps: ImageMaps, class_names: list[str], path: Path) -> None:
    """Figure 4 panel: fused image, the total attention map and one map per class."""
    panels = 2 + len(maps.per_class)
    cols = min(panels, 4)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    flat = axes.ravel()
    show(flat[0], maps.fused_rgb, "fused")
    show_attention(flat[1], maps.total, f"total A^({maps.stage})")
    for ax, (c, values) in zip(flat[2:], maps.per_class.items()):
        show_attention(ax, values, class_names[c])
    for ax in flat[panels:]:
        ax.axis("off")
    fig.suptitle(f"Figure 4: attribution attention, {maps.name}", fontsize=11)
    save_figure(fig, path, dpi=120, bbox_inches="tight")


def draw_stages(maps: ImageMaps, path: Path) -> None:
    """Stage outputs I^(0..K) (top) and the attention each stage used, A^(1..K) (bottom)."""
    cols = len(maps.path)
    fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols, 5.2), squeeze=False)
    for k, image in enumerate(maps.path):
        show(axes[0, k], np.clip(image, 0.0, 1.0), f"I^({k})", vmin=0.0, vmax=1.0)
    axes[1, 0].axis("off")
    for k, att in enumerate(maps.used_attention, start=1):
        show_attention(axes[1, k], att, f"A^({k})")
    fig.suptitle(f"Stage outputs and attention, {maps.name}", fontsize=11)
    save_figure(fig, path, dpi=120, bbox_inches="tight")


# ---------------------------------------------------------------------------------------------------- driver


def find_images(args: argparse.Namespace) -> list[tuple[str, Path, Path, Path | None]]:
    """(name, ir, vi, label or None) of the chosen images."""
    from data.datasets import list_images, pair_files

    if args.data_root is not None:
        split = args.data_root / args.split
        layouts = [("Infrared", "Visible", "Label"), ("ir", "vi", "Segmentation_labels")]
        found = next(((split / a, split / b, split / c) for a, b, c in layouts if (split / a).is_dir()), None)
        if found is None:
            raise ReproError(f"{split}: neither Infrared/Visible (FMB) nor ir/vi (MSRS) folders")
        ir_dir, vi_dir, label_dir = found
        label_dir = label_dir if label_dir.is_dir() else None
    elif args.ir is not None and args.vi is not None:
        ir_dir, vi_dir, label_dir = args.ir, args.vi, args.labels
    else:
        raise ReproError("give --data-root, or --ir and --vi")
    pairs, _ = pair_files(ir_dir, vi_dir)
    labels = list_images(label_dir)[0] if label_dir is not None else {}
    by_name = {p.name: p for p in pairs}
    if args.names:
        missing = [n for n in args.names if n not in by_name]
        if missing:
            raise ReproError(f"no pair named {missing} in {ir_dir} / {vi_dir}")
        chosen = [by_name[n] for n in args.names]
    else:
        chosen = pairs[: args.count]
    if args.regions == "labels" and any(p.name not in labels for p in chosen):
        raise ReproError("--regions labels needs a label file for every chosen image (--labels or --data-root)")
    return [(p.name, p.ir, p.vi, labels.get(p.name) if args.regions == "labels" else None) for p in chosen]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="trained (or converted release) checkpoint")
    add_config_args(parser)
    images = parser.add_argument_group("images")
    images.add_argument("--data-root", type=Path, help="dataset root in the FMB or MSRS layout")
    images.add_argument("--split", default="test", help="split under --data-root (default test)")
    images.add_argument("--ir", type=Path, help="infrared folder (instead of --data-root)")
    images.add_argument("--vi", type=Path, help="visible folder")
    images.add_argument("--labels", type=Path, help="label folder (for --regions labels)")
    images.add_argument("--names", nargs="+", help="image names (file stems); default: the first --count pairs")
    images.add_argument("--count", type=int, default=3, help="number of images when --names is not given")
    maps = parser.add_argument_group("maps")
    maps.add_argument("--regions", default="predicted", choices=["predicted", "labels"],
                      help="class regions: the segmenter's prediction on I^(0) (inference) or the labels")
    maps.add_argument("--classes", nargs="+", help="classes for Figure 4 (names or indices; default: the largest)")
    maps.add_argument("--max-classes", type=int, default=4, help="classes shown in Figure 4 by default")
    maps.add_argument("--stage", type=int, default=None, help="attention of this stage (1..K+1; default K)")
    add_common_args(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from metrics.report import write_json
    from metrics.segmentation import resolve_classes

    if args.count < 1:
        raise ReproError(f"--count must be at least 1, got {args.count}")
    out = args.results / "figures"
    images = find_images(args)
    fusion = FusionModel(args.checkpoint, args.config, args.overrides, args.device)
    todo = []
    for name, ir, vi, label in images:
        targets = [out / f"{name}_{suffix}" for suffix in OUTPUTS]
        if args.force:
            for target in [*targets, out / f"{name}_fig3.json", out / f"{name}_fig4.npz"]:
                if target.exists():
                    remove_output(target, args.results)
        if not all(t.is_file() for t in targets):
            todo.append((name, ir, vi, label))
    if len(todo) < len(images):
        say(f"{len(images) - len(todo)} image(s) already drawn in {out}; skipped")
    for name, ir, vi, label in progress(todo, "figures", args.quiet, unit="image"):
        model, cfg, device = fusion.get()
        names = fusion.class_names
        try:
            chosen = resolve_classes(args.classes, names) if args.classes else None
        except ValueError as err:
            raise ReproError(str(err)) from err
        maps = compute_maps(model, ir, vi, label, args.stage, chosen, args.max_classes, device,
                            cfg["test"]["output"])
        ignore = model.attribution.ignore_index
        regions = draw_figure3(maps, names, ignore, out / f"{name}_fig3.png")
        write_json(out / f"{name}_fig3.json", json_safe({"image": name, "regions_from": args.regions,
                                                         "regions": regions}))
        out.mkdir(parents=True, exist_ok=True)
        per_class = (np.stack(list(maps.per_class.values())) if maps.per_class
                     else np.zeros((0, *maps.total.shape), np.float32))
        np.savez_compressed(out / f"{name}_fig4.npz", total=maps.total, regions=maps.regions,
                            stage=np.array(maps.stage), classes=np.array(list(maps.per_class), dtype=np.int64),
                            per_class=per_class, used_attention=np.stack(maps.used_attention),
                            stages=np.stack(maps.path))
        draw_figure4(maps, names, out / f"{name}_fig4.png")
        draw_stages(maps, out / f"{name}_stages.png")
    if not args.quiet:
        say(f"figures in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
