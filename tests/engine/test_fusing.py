"""test.py and engine.fuse_folder: options checked before any work, outputs all or nothing with normal permissions,
exact (float64) mode, regions from labels, overrides of the checkpoint's config, batch-invariant results,
automatic tiles."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import load_model_from_checkpoint
from engine.fuse_folder import FuseSettings, fuse_folder
from engine.inference import estimated_peak_bytes, fuse, tile_for_budget
from models.uaafusion import build_model
from tests.helpers.factories import gray, pair_folders, write_image, write_tiny_checkpoint
from tests.helpers.scripts import test_cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def pairs(tmp_path) -> tuple[Path, Path]:
    return pair_folders(tmp_path, ["a", "b", "c"])


def _run(checkpoint, ir, vi, out, *extra) -> int:
    return test_cli.main(["--checkpoint", str(checkpoint), "--ir", str(ir), "--vi", str(vi), "--out", str(out),
                          "--quiet", *extra])


@pytest.mark.parametrize("options,words", [
    (["--tile", "1"], "tile must be larger than the 32-pixel overlap"),
    (["--tile", "-5"], "tile must be larger than the 32-pixel overlap"),
    (["--tile", "32"], "tile must be larger than the 32-pixel overlap"),
    (["--batch", "-3"], "batch size must be at least 1"),
    (["--batch", "0"], "batch size must be at least 1"),
    (["--ext", ".xyz"], "cannot write '.xyz'"),
    (["--ext", "/../x.png"], "extension must look like"),
    (["--max-memory", "-1"], "max memory must be positive"),
    (["--set", "bogus.key=1"], "unknown config key 'bogus'"),
    (["--labels", "/no/such/folder"], "labels folder not found"),
])
def test_unusable_options_fail_before_any_work(checkpoint, pairs, tmp_path, capsys, options, words):
    out = tmp_path / "out"
    assert _run(checkpoint, *pairs, out, *options) == 2
    assert words in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_set_overrides_the_checkpoints_config(checkpoint, pairs, tmp_path):
    clamp, stretch = tmp_path / "clamp", tmp_path / "stretch"
    assert _run(checkpoint, *pairs, clamp, "--save-npy") == 0
    assert _run(checkpoint, *pairs, stretch, "--set", "test.output=stretch") == 0
    import cv2

    a = cv2.imread(str(clamp / "a.png"))
    b = cv2.imread(str(stretch / "a.png"))
    assert not np.array_equal(a, b)  # the override reached the fusing settings


def test_outputs_are_all_or_nothing_and_name_the_failing_file(checkpoint, pairs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "maps").write_text("not a folder")  # every map write fails, after the image and .npy were encoded
    assert _run(checkpoint, *pairs, out, "--save-npy", "--save-maps") == 1
    err = capsys.readouterr().err
    assert "maps" in err and "failed: a" in err
    assert not (out / "a.png").exists() and not (out / "npy" / "a.npy").exists()  # nothing of the pair was kept
    assert not list(out.rglob(".*.tmp"))


def test_outputs_get_normal_permissions(checkpoint, pairs, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        assert _run(checkpoint, *pairs, out, "--save-npy") == 0
    finally:
        os.umask(old)
    for path in (out / "a.png", out / "npy" / "a.npy"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_output_folder_that_is_an_input_folder_is_refused(checkpoint, pairs, tmp_path, capsys):
    ir, vi = pairs
    alias = tmp_path / "alias"
    alias.symlink_to(ir, target_is_directory=True)
    before = sorted(p.name for p in ir.iterdir())
    assert _run(checkpoint, ir, vi, alias) == 2
    assert "is an input folder" in capsys.readouterr().err
    assert sorted(p.name for p in ir.iterdir()) == before


def test_float64_mode_keeps_float64_outputs(checkpoint, pairs, tmp_path):
    out = tmp_path / "out64"
    assert _run(checkpoint, *pairs, out, "--precision", "float64", "--save-npy", "--save-maps") == 0
    assert np.load(out / "npy" / "a.npy").dtype == np.float64
    assert np.load(out / "maps" / "a_w_ir.npy").dtype == np.float64
    out32 = tmp_path / "out32"
    assert _run(checkpoint, *pairs, out32, "--save-npy") == 0
    a64, a32 = np.load(out / "npy" / "a.npy"), np.load(out32 / "npy" / "a.npy")
    # the same image; float32 may move a region's w where its attributions nearly cancel (D9), so compare typical pixels
    assert a32.dtype == np.float32 and a64.shape == a32.shape and np.median(np.abs(a64 - a32)) < 1e-4


def test_labels_give_the_regions_and_bad_labels_are_named(checkpoint, pairs, tmp_path, capsys):
    ir, vi = pairs
    labels = tmp_path / "labels"
    write_image(labels / "a.png", (gray(7) // 64).astype(np.uint8))  # classes 0..3
    write_image(labels / "b.png", np.zeros((30, 36), np.uint8))  # wrong size; c has none
    out = tmp_path / "out"
    assert _run(checkpoint, ir, vi, out, "--labels", str(labels), "--save-maps") == 1
    err = capsys.readouterr().err
    assert "b.png" in err and "36x30" in err
    assert "no label named 'c.*'" in err
    assert (out / "a.png").exists() and not (out / "b.png").exists() and not (out / "c.png").exists()
    # regions are the labels: the weights are constant on each labelled class region
    w_ir = np.load(out / "maps" / "a_w_ir.npy")
    label = (gray(7) // 64).astype(np.int64)
    for c in np.unique(label):
        assert np.ptp(w_ir[label == c]) < 1e-6


def test_batched_fusion_equals_single_fusion_at_five_stages():
    """The paper network (5 stages, 32 channels, DeepLabV3+): attribution runs per image, so a batch of 3 gives
    each image what it gives alone, up to float32 round-off of the batched fusion network."""
    torch.manual_seed(0)
    cfg = {"fusion": {}, "segmenter": {"encoder_weights": None}, "attribution": {}}
    model = build_model(cfg, num_classes=4).eval()
    g = torch.Generator().manual_seed(1)
    ir, vi = torch.rand(3, 1, 32, 48, generator=g), torch.rand(3, 1, 32, 48, generator=g)
    batched = fuse(model, ir, vi)
    for i in range(3):
        single = fuse(model, ir[i:i + 1], vi[i:i + 1])
        torch.testing.assert_close(batched.w_ir[i:i + 1], single.w_ir, rtol=0, atol=0)  # identical attribution
        torch.testing.assert_close(batched.fused[i:i + 1], single.fused, rtol=0, atol=1e-5)


def test_automatic_tiles_follow_the_memory_budget(checkpoint, tmp_path):
    assert tile_for_budget(480, 640, None) is None
    assert tile_for_budget(480, 640, estimated_peak_bytes(480, 640)) is None
    side = tile_for_budget(2048, 2048, estimated_peak_bytes(512, 512))
    assert side is not None and 64 <= side <= 512 and side % 32 == 0
    assert estimated_peak_bytes(side, side) <= estimated_peak_bytes(512, 512)
    assert tile_for_budget(100, 100, estimated_peak_bytes(64, 64)) == 64
    model, _ = load_model_from_checkpoint(checkpoint)
    ir, vi = pair_folders(tmp_path, ["big"], h=100, w=100)
    budget_gb = estimated_peak_bytes(64, 64) / 2**30
    report = fuse_folder(model, ir, vi, tmp_path / "tiled", FuseSettings(show_progress=False, save_npy=True,
                                                                        max_memory_gb=budget_gb))
    assert report.ok and np.load(tmp_path / "tiled" / "npy" / "big.npy").shape == (100, 100)
