"""The benchmark scripts run end to end at tiny shapes, and the equalities they print hold (timings are not checked:
benchmarks measure them, tests do not)."""
from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch

from scripts import bench_attribution, bench_model


def test_bench_attribution_compares_naive_fast_and_the_scoring_copy_in_float64(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_attribution", "--batch", "1", "--size", "32", "--classes", "4",
                                      "--per-image", "2", "--steps", "2", "--dtype", "float64", "--threads", "1"])
    bench_attribution.main()
    out = capsys.readouterr().out
    diffs = [float(x) for x in re.findall(r"max rel diff ([0-9.e+-]+)", out)]
    assert len(diffs) == 2 and max(diffs) < 1e-10, out  # scoring copies agree; fast equals naive
    assert "scoring copy: segmenter's own layers" in out and "attribution: naive" in out


def test_bench_model_times_every_phase_of_both_variants(capsys):
    threads = torch.get_num_threads()
    try:
        bench_model.main(["--size", "64x64", "--batch", "2", "--patch", "32", "--classes", "4", "--per-image", "2",
                          "--repeats", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "fuse: the segmenter finds" in out
    for line in ("fuse 64x64: baseline", "train step 2x32^2: baseline"):
        match = re.search(re.escape(line) + r".*max abs diff ([0-9.e+-]+)", out)
        assert match and float(match.group(1)) < 1e-3, out  # float32 round-off between the two code paths
    for phase in ("IG weights", "path attention", "fusion network", "backward"):
        assert phase in out


def test_striped_regions_hold_exactly_the_requested_classes():
    regions = bench_model.striped_regions(6, 10, 15, 4)
    assert regions.shape == (1, 6, 10) and regions.unique().tolist() == [0, 1, 2, 3]
    assert (regions[:, 0] == regions[:, 5]).all()  # vertical bands
    with pytest.raises(ValueError, match="fuse-classes"):
        bench_model.striped_regions(6, 10, 3, 4)


def test_pretrain_segmenter_trains_reports_and_saves_a_segmenter_the_trainer_loads(synthetic_root, tmp_path, capsys):
    from engine.checkpoint import load_checkpoint
    from scripts import pretrain_segmenter

    saved = tmp_path / "seg" / "segmenter.pt"
    args = ["--name", "fmb", "--root", str(synthetic_root), "--val-name", "fmb", "--val-root", str(synthetic_root),
            "--classes", "15", "--weights", "log", "--steps", "2", "--batch", "2", "--patch", "32",
            "--mode", "random_crop", "--schedule", "cosine", "--sources", "ir", "avg", "--eval-train", "2",
            "--threads", "1", "--quiet", "--save", str(saved)]
    assert pretrain_segmenter.main(args) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["steps"] == 2 and set(record["val"]) == {"ir", "vi", "avg"} and len(record["val"]["ir"]["iou"]) == 15
    assert all(0 <= s["miou_present"] <= 1 for s in record["val"].values())
    payload = load_checkpoint(saved)
    assert payload["num_classes"] == 15 and payload["pretrain_record"]["weights"] == "log"
    from models.segmenter import build_segmenter

    build_segmenter(15).load_state_dict(payload["segmenter"])  # the keys and shapes of the default segmenter


def test_class_weights_and_the_cosine_schedule():
    from scripts.pretrain_segmenter import class_weights, learning_rate

    weights = class_weights(np.array([0.9, 0.08, 0.02, 0.0]), "median")
    torch.testing.assert_close(weights, torch.tensor([0.08 / 0.9, 1.0, 4.0, 50.0]))
    assert class_weights(np.array([0.5, 0.5]), "none") is None
    torch.testing.assert_close(class_weights(np.array([0.5, 0.5]), "log"), torch.full((2,), 1 / np.log(1.52)))
    assert learning_rate(1e-3, 0, 10, "cosine") == 1e-3 and learning_rate(1e-3, 5, 10, "cosine") == pytest.approx(5e-4)
    assert learning_rate(1e-3, 7, 10, "constant") == 1e-3


def test_pretraining_on_avg_shows_the_segmenter_the_image_it_segments_at_inference():
    from models.fusion_net import UAAFusionNet
    from scripts.pretrain_segmenter import source_image

    generator = torch.Generator().manual_seed(0)
    sample = {"ir": torch.rand(2, 1, 4, 5, generator=generator, dtype=torch.float64),
              "vi": torch.rand(2, 1, 4, 5, generator=generator, dtype=torch.float64)}
    avg = source_image(sample, "avg")
    torch.testing.assert_close(avg, UAAFusionNet.initial_estimate(sample["ir"], sample["vi"]), rtol=0, atol=0)
    torch.testing.assert_close(avg, (sample["ir"] + sample["vi"]) / 2, rtol=0, atol=0)
    assert source_image(sample, "ir") is sample["ir"] and source_image(sample, "vi") is sample["vi"]


def test_pretrain_segmenter_resumes_from_a_saved_segmenter_evaluates_it_and_stops_on_time(synthetic_root, tmp_path,
                                                                                         capsys):
    """--init starts from a --save file (--steps 0 evaluates it: the same IoUs as when it was saved),
    --max-minutes stops early and still evaluates and saves, --val-root none skips MSRS_labelled, and bad
    --init files, devices and argument combinations are refused with a clear message."""
    from scripts import pretrain_segmenter

    common = ["--name", "fmb", "--root", str(synthetic_root), "--val-name", "fmb", "--val-root", str(synthetic_root),
              "--classes", "15", "--batch", "2", "--patch", "32", "--mode", "random_crop", "--eval-train", "0",
              "--threads", "1", "--quiet"]
    saved = tmp_path / "a.pt"
    assert pretrain_segmenter.main(common + ["--steps", "1", "--save", str(saved)]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pretrain_segmenter.main(common + ["--steps", "0", "--init", str(saved)]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["steps"] == 0 and again["init"] == str(saved) and again["val"] == first["val"]

    stopped = tmp_path / "b.pt"
    assert pretrain_segmenter.main(common + ["--steps", "5", "--init", str(saved), "--max-minutes", "1e-9",
                                             "--val-root", "none", "--save", str(stopped)]) == 0
    out = capsys.readouterr().out
    record = json.loads(out.strip().splitlines()[-1])
    assert record["steps"] == 1 and record["planned_steps"] == 5 and "val" not in record
    assert "--max-minutes 1e-09 reached after 1 of 5 steps" in out and stopped.is_file()

    assert pretrain_segmenter.main(common + ["--steps", "0", "--init", str(saved), "--classes", "9"]) == 2
    assert "has 15 classes, --classes is 9" in capsys.readouterr().err
    assert pretrain_segmenter.main(common + ["--steps", "0", "--init", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert pretrain_segmenter.main(common + ["--steps", "1", "--device", "nonsense"]) == 2
    assert "unknown device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pretrain_segmenter.parse_args(["--steps", "0"])  # nothing to evaluate
    for bad in (["--scale-range", "0.5", "2"], ["--mode", "random_crop", "--scale-range", "2", "1"]):
        with pytest.raises(SystemExit):
            pretrain_segmenter.parse_args(bad)  # tiles mode has no rescaling; LO > HI

    augmented = tmp_path / "c.pt"
    assert pretrain_segmenter.main(common + ["--steps", "1", "--scale-range", "0.5", "2", "--no-vertical-flips",
                                             "--val-root", "none", "--save", str(augmented)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["scale_range"] == [0.5, 2.0] and record["vertical_flips"] is False
    assert first["scale_range"] is None and first["vertical_flips"] is True


def _crop_dataset(root):
    from data.datasets import build_dataset

    return build_dataset({"name": "fmb", "root": str(root), "mode": "random_crop", "flips": True, "patch_size": 32,
                          "seed": 0}, "train")


def test_every_epoch_of_the_pretraining_draws_new_crops(synthetic_root):
    """Session 14's fix: the stream visits every scene once per epoch, in a new order, with a new crop each epoch
    (before, the seeded dataset stayed in epoch 0, so each scene gave the same crop every epoch: --repeat-crops)."""
    from scripts.pretrain_segmenter import EpochStream, training_batches

    dataset = _crop_dataset(synthetic_root)
    n = len(dataset)
    stream = EpochStream(dataset, 2 * n, seed=0)
    orders = [stream.order(0), stream.order(1)]
    assert all(sorted(o.tolist()) == list(range(n)) for o in orders) and not torch.equal(*orders)
    first = {stream[k]["name"]: stream[k]["ir"] for k in range(n)}
    second = {stream[k]["name"]: stream[k]["ir"] for k in range(n, 2 * n)}
    assert set(first) == set(second) and len(first) == n
    changed = sum(not torch.equal(first[name], second[name]) for name in first)
    assert changed >= n - 2, changed  # a crop can repeat by chance, not for every scene
    with pytest.raises(IndexError):
        stream[2 * n]

    def epoch_crops(args, epochs):
        batches = training_batches(dataset, args, pin_memory=False)
        crops = [sorted(tuple(np.round(b.flatten()[:16].numpy(), 6)) for b in next(batches)["ir"])
                 for _ in range(epochs * n // args.batch)]
        per_epoch = n // args.batch
        return [sorted(sum(crops[e * per_epoch:(e + 1) * per_epoch], [])) for e in range(epochs)]

    from argparse import Namespace

    old = Namespace(batch=4, steps=2 * n // 4, seed=0, workers=0, repeat_crops=True)
    repeated = epoch_crops(old, 2)
    assert repeated[0] == repeated[1]  # the old loop: the same crops again
    new = epoch_crops(Namespace(**{**vars(old), "repeat_crops": False}), 2)
    assert new[0] != new[1]


def test_the_crop_stream_is_the_same_with_loader_processes(synthetic_root):
    from argparse import Namespace

    from scripts.pretrain_segmenter import training_batches

    dataset = _crop_dataset(synthetic_root)
    args = Namespace(batch=4, steps=3, seed=0, workers=0, repeat_crops=False)
    serial = [b["ir"] for b in training_batches(dataset, args, pin_memory=False)]
    parallel = [b["ir"] for b in training_batches(dataset, Namespace(**{**vars(args), "workers": 2}), pin_memory=False)]
    assert len(serial) == len(parallel) == 3
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))
