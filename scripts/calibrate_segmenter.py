"""Undo the class weighting in a segmenter's predictions: logit adjustment folded into its last bias.

    python -m scripts.calibrate_segmenter --model checkpoints/uaafusion_mfnet.pt --save runs/calibrated.pt
    python -m scripts.calibrate_segmenter --model runs/x.pt --save runs/y.pt --tau 0.5      # a fixed strength
    python -m scripts.calibrate_segmenter --model runs/x.pt --save runs/y.pt --eval-root ../shared/data/MSRS_labelled

A segmenter trained with class-weighted cross-entropy (weights w_c, ``loss.seg_class_weights``, an extension,
docs/DECISIONS.md D12) learns scores that lean towards the rare classes: at the optimum of the weighted loss
softmax(f)_c ∝ w_c · p(c | x), so its argmax over-predicts them (the session-14 default: 40 % of the pixels it
calls person are people, 80 % of the people are found). Subtracting τ · ln w_c from class c's score removes that
lean (τ = 1 at the optimum; Menon et al., "Long-tail learning via logit adjustment", ICLR 2021). The scores are
shifted by a constant per class, so the shift is folded into the bias of the segmenter's last convolution: the
file fuses with ``test.py`` as before, and only the argmax changes. In this method the argmax on I^(0) gives the
attribution regions; the integrated gradients of Eq. 5–8 and the path attention of Eq. 9–12 are differences and
gradients of logits (``attribution.score_activation: none``), which a constant does not change.

τ: ``auto`` (default) scores every τ of ``--grid`` on the model's own training scenes (their averaged image
I^(0) = (ir + vi) / 2, the inference image; infrared toned as the model's config says) and takes the one with the
highest mean IoU over the classes the labels show (the smallest on ties). Evaluation scenes play no part in it.
The weights w_c are the ones the joint stage used: the model's ``loss.seg_class_weights`` resolved on its training
labels. ``--eval-root`` also prints the curve (mean IoU and per-class IoU) on a labelled evaluation set, for the
record only. The written file records τ, the weights, the offsets and the curves under ``calibration``.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from tqdm import tqdm

from data.datasets import build_dataset
from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, segmenter_state
from engine.runtime import configure_threads, resolve_device
from losses.class_weights import resolve_seg_class_weights
from metrics.segmentation import class_scores, confusion_matrix
from models.segmenter import build_segmenter, view_scores
from scripts.batchnorm_swap import training_set
from scripts.pretrain_segmenter import source_image
from scripts.real_results import iou_summary

DEFAULT_GRID = tuple(round(0.125 * i, 3) for i in range(13))  # 0, 0.125, ..., 1.5


def classifier_bias_key(segmenter: torch.nn.Module) -> str:
    """The state-dict key of the bias of the segmenter's last convolution (smp's ``segmentation_head``).

    Raises:
        ValueError: the segmenter has no such layer with a bias (e.g. the release's network, whose outputs are
            sigmoids, not logits).
    """
    head = getattr(segmenter, "segmentation_head", None)
    convs = [] if head is None else [(n, m) for n, m in head.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs or convs[-1][1].bias is None:
        raise ValueError("logit adjustment needs a segmenter whose last layer is a convolution with a bias "
                         "(segmentation-models-pytorch's segmentation_head); this one has none")
    return f"segmentation_head.{convs[-1][0]}.bias"


def logit_offsets(weights: torch.Tensor, tau: float) -> torch.Tensor:
    """−τ · ln w_c per class: what logit adjustment adds to class c's score. weights: (C,) > 0."""
    if (weights <= 0).any():
        raise ValueError("logit adjustment needs positive class weights")
    return -float(tau) * torch.log(weights.double())


def adjusted_state(state: dict, bias_key: str, offsets: torch.Tensor) -> dict:
    """A copy of the segmenter ``state`` with ``offsets`` (C,) added to the bias under ``bias_key``."""
    bias = state[bias_key]
    if bias.shape != offsets.shape:
        raise ValueError(f"{bias_key} has {bias.numel()} classes, the class weights {offsets.numel()}")
    return {**state, bias_key: (bias.double() + offsets).to(bias.dtype)}


def confusions_by_tau(scored: Iterable[tuple[np.ndarray, np.ndarray]], log_weights: np.ndarray, taus: list[float],
                      num_classes: int, ignore_index: int = 255) -> dict[float, np.ndarray]:
    """The confusion matrix of argmax_c(f_c − τ · ln w_c) against the labels, summed over ``scored`` (pairs of
    (C, H, W) scores and (H, W) labels, read once: a generator keeps one scene in memory), for each τ.

    Scores of several views, (V, C, H, W) (``attribution.region_scales`` / ``region_flip``), are adjusted each and
    combined as the model's inference combines them: the argmax of the mean of their softmax.
    """
    out = {tau: np.zeros((num_classes, num_classes), dtype=np.int64) for tau in taus}
    for scores, label in scored:
        for tau in taus:
            adjusted = scores - tau * log_weights[:, None, None]
            if adjusted.ndim == 4 and len(adjusted) > 1:
                pred = torch.from_numpy(adjusted).softmax(dim=1).mean(dim=0).argmax(dim=0).numpy()
            else:
                pred = adjusted.reshape(adjusted.shape[-3:]).argmax(axis=0)
            out[tau] += confusion_matrix(pred, label, num_classes, ignore_index)
    return out


def score_grid(segmenter: torch.nn.Module, dataset, count: int, log_weights: np.ndarray, taus: list[float],
               num_classes: int, ignore_index: int, desc: str, quiet: bool,
               views: tuple[tuple[float, ...], bool] = ((1.0,), False)) -> dict[float, np.ndarray]:
    """Confusion matrices, per τ, of the segmenter's adjusted argmax on the averaged image of ``dataset``'s first
    ``count`` scenes (full size, on the segmenter's device); ``views``: (scales, flip) of the inference regions."""
    device = next(segmenter.parameters()).device

    def scored():
        for i in tqdm(range(count), desc=desc, disable=quiet):
            sample = dataset[i]
            scores = torch.stack(view_scores(segmenter, source_image(sample, "avg")[None].to(device), *views))
            yield scores[:, 0].double().cpu().numpy(), sample["label"].numpy()

    with torch.no_grad():
        return confusions_by_tau(scored(), log_weights, taus, num_classes, ignore_index)


def miou_present(confusion: np.ndarray) -> float:
    """Mean IoU over the classes the labels show (rows: labels)."""
    return iou_summary(confusion)["miou_present"]


def best_tau(curve: dict[float, float]) -> float:
    """The τ with the highest score (the smallest of equal ones)."""
    top = max(curve.values())
    return min(tau for tau, value in curve.items() if value == top)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="model file (exported or a run's last.pt)")
    p.add_argument("--save", type=Path, required=True, help="write the calibrated model file here (atomically)")
    p.add_argument("--tau", default="auto", help="'auto' (chosen on the training scenes) or a number ≥ 0")
    p.add_argument("--grid", type=float, nargs="+", default=list(DEFAULT_GRID), help="the τ values 'auto' scores")
    p.add_argument("--scenes", type=int, default=None, metavar="N", help="score on the first N training scenes")
    p.add_argument("--eval-root", default=None,
                   help="also print the --grid curve on this labelled set (e.g. ../shared/data/MSRS_labelled); "
                        "reported only, never used to choose τ")
    p.add_argument("--eval-name", default="mfnet", help="layout of --eval-root (data/layouts.py)")
    p.add_argument("--eval-split", default="test")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.tau != "auto":
        try:
            args.tau = float(args.tau)
        except ValueError:
            p.error(f"--tau must be 'auto' or a number, got {args.tau!r}")
        if not args.tau >= 0:
            p.error("--tau must be ≥ 0")
    if any(not t >= 0 for t in args.grid):
        p.error("--grid values must be ≥ 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_threads(args.threads)
    try:
        payload = load_checkpoint(args.model)
        config, num_classes = payload["config"], int(payload["num_classes"])
    except (OSError, KeyError, CheckpointError, ValueError) as err:
        print(f"error: {args.model}: {err}", file=sys.stderr)
        return 2
    setting = config.get("loss", {}).get("seg_class_weights")
    if setting is None:
        print(f"error: {args.model} was trained with plain cross-entropy (loss.seg_class_weights is null): "
              "there is no class weighting to undo", file=sys.stderr)
        return 2
    activation = config.get("attribution", {}).get("score_activation", "none")
    if activation != "none":
        print(f"error: {args.model} scores attribution on the {activation} of the segmenter's output "
              "(attribution.score_activation): a shift of the logits would change the integrated gradients too, "
              "not only the regions", file=sys.stderr)
        return 2
    try:
        train = training_set(config)
        scan = train.label_scan or train._scan_labels()
        weights = resolve_seg_class_weights(setting, num_classes, scan.class_pixels)
    except (KeyError, OSError, ValueError) as err:
        print(f"error: the model's training set (config data) cannot be read: {err}", file=sys.stderr)
        return 2
    state = {k: v.float() for k, v in segmenter_state({"model": payload["model"]}).items()}
    segmenter = build_segmenter(num_classes, **dict(config["segmenter"], encoder_weights=None))
    segmenter.load_state_dict(state)
    try:
        bias_key = classifier_bias_key(segmenter)
    except ValueError as err:
        print(f"error: {args.model}: {err}", file=sys.stderr)
        return 2

    curve, eval_curve = None, None
    count = len(train) if args.scenes is None else min(args.scenes, len(train))
    segmenter = segmenter.to(resolve_device(args.device)).eval()
    log_weights = np.log(weights.double().numpy())
    ignore = int(config["data"].get("ignore_index", 255))
    regions_from = config.get("attribution", {})
    views = (tuple(regions_from.get("region_scales", [1.0])), bool(regions_from.get("region_flip", False)))
    if views != ((1.0,), False):
        print(f"regions from views at scales {list(views[0])}" + (", mirrored too" if views[1] else "")
              + " (attribution.region_scales / region_flip)")
    if args.tau == "auto":
        confusions = score_grid(segmenter, train, count, log_weights, args.grid, num_classes, ignore,
                                "scoring training scenes", args.quiet, views)
        curve = {tau: round(miou_present(matrix), 4) for tau, matrix in confusions.items()}
        tau = best_tau(curve)
        for t, value in curve.items():
            print(f"tau {t:g}: mean IoU {value:.4f} on {count} training scenes" + (" <- chosen" if t == tau else ""))
    else:
        tau = args.tau
    if args.eval_root is not None:
        try:
            held_out = build_dataset({"name": args.eval_name, "root": args.eval_root, "mode": "full"},
                                     args.eval_split)
        except (KeyError, OSError, ValueError) as err:
            print(f"error: --eval-root {args.eval_root}: {err}", file=sys.stderr)
            return 2
        taus = sorted({*args.grid, tau})
        eval_curve = {}
        for t, matrix in score_grid(segmenter, held_out, len(held_out), log_weights, taus, num_classes, ignore,
                                    "scoring --eval-root", args.quiet, views).items():
            iou = np.nan_to_num(class_scores(matrix)[1])
            eval_curve[t] = {"miou_present": round(miou_present(matrix), 4), "iou": np.round(iou, 4).tolist()}
            print(f"tau {t:g}: mean IoU {eval_curve[t]['miou_present']:.4f} on {len(held_out)} scenes of "
                  f"{args.eval_root} (reported, not used), per class {np.round(iou, 3).tolist()}")
    offsets = logit_offsets(weights, tau)
    model_state = dict(payload["model"])
    key = f"segmenter.{bias_key}"
    model_state[key] = adjusted_state({bias_key: model_state[key]}, bias_key, offsets)[bias_key]
    record = {"method": "logit adjustment: class c's score − tau · ln w_c, folded into the segmenter's last bias",
              "tau": tau, "class_weights": setting, "weights": [round(float(w), 6) for w in weights],
              "offsets": [round(float(o), 6) for o in offsets], "chosen_on": None if curve is None else
              f"{count} training scenes, mean IoU of the averaged image", "region_views":
              {"scales": list(views[0]), "flip": views[1]}, "curve": curve, "source": str(args.model)}
    if eval_curve is not None:
        record["eval_curve"] = {"root": str(args.eval_root), "by_tau": eval_curve}
    if "calibration" in payload:
        record["earlier"] = payload["calibration"]  # offsets add up
    try:
        save_checkpoint(args.save, {**{k: v for k, v in payload.items() if k != "format"}, "model": model_state,
                                    "calibration": record})
    except OSError as err:
        print(f"error: cannot write {args.save}: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"tau": tau, "offsets": record["offsets"]}))
    print(f"wrote {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
