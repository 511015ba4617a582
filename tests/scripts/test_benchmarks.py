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


def test_probe_segmenter_trains_and_reports_per_class_iou(synthetic_root, capsys):
    from scripts import probe_segmenter

    args = ["--name", "fmb", "--root", str(synthetic_root), "--val-name", "fmb", "--val-root", str(synthetic_root),
            "--classes", "15", "--weights", "median", "--steps", "2", "--batch", "2", "--patch", "32",
            "--eval-train", "2", "--threads", "1"]
    assert probe_segmenter.main(args) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["steps"] == 2 and set(record["val"]) == {"ir", "vi"} and len(record["val"]["ir"]["iou"]) == 15


def test_median_frequency_weights():
    from scripts.probe_segmenter import class_weights

    weights = class_weights(np.array([0.9, 0.08, 0.02, 0.0]), "median")
    torch.testing.assert_close(weights, torch.tensor([0.08 / 0.9, 1.0, 4.0, 50.0]))
    assert class_weights(np.array([0.5, 0.5]), "none") is None
