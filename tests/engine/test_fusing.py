"""test.py and engine.fuse_folder: options checked before any work, outputs all or nothing with normal permissions,
exact (float64) mode, regions from labels, overrides of the checkpoint's config, batch-invariant results,
automatic tiles."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.io import load_fusion_pair
from data.layouts import colorize_labels
from engine.checkpoint import load_model_from_checkpoint
from engine.fuse_folder import FuseSettings, attribution_record, fuse_folder, region_attributions
from engine.inference import estimated_peak_bytes, fuse, tile_for_budget
from models.segmenter import segment
from models.uaafusion import UAAFusionOutput, build_model
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


TILE_RULE = "tile (--tile, test.tile) must be at least 64, twice the 32-pixel overlap"
MEMORY_RULE = "--max-memory (test.max_memory_gb) must be a positive finite number of GB"


@pytest.mark.parametrize("options,words", [
    (["--tile", "1"], TILE_RULE),
    (["--tile", "-5"], TILE_RULE),
    (["--tile", "32"], TILE_RULE),
    (["--tile", "33"], TILE_RULE),  # a stride of 1 pixel: about 1,000 tiles on a 64x64 image
    (["--tile", "63"], TILE_RULE),
    (["--set", "test.tile=33"], "config key 'test.tile' must be at least 64"),
    (["--batch", "-3"], "batch size must be at least 1"),
    (["--batch", "0"], "batch size must be at least 1"),
    (["--ext", ".xyz"], "--ext .xyz is not allowed"),
    (["--ext", ".gif"], "--ext .gif is not allowed: outputs are written in a lossless format"),  # palette-quantised
    (["--ext", ".jpg"], "--ext .jpg is not allowed"),  # lossy
    (["--ext", "/../x.png"], "extension must look like"),
    (["--max-memory", "-1"], MEMORY_RULE),
    (["--max-memory", "inf"], MEMORY_RULE),
    (["--max-memory", "nan"], MEMORY_RULE),
    (["--set", "test.max_memory_gb=.inf"], "config key 'test.max_memory_gb' must be a finite number"),
    (["--set", "bogus.key=1"], "unknown config key 'bogus'"),
    (["--labels", "/no/such/folder"], "labels folder not found"),
])
def test_unusable_options_fail_before_any_work(checkpoint, pairs, tmp_path, capsys, options, words):
    out = tmp_path / "out"
    assert _run(checkpoint, *pairs, out, *options) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # checked before the output folder is created


def test_allowed_output_formats_are_read_back_unchanged(checkpoint, pairs, tmp_path):
    """Every allowed --ext is lossless and read by the project's one reader (what eval_metrics.py scores)."""
    from data.io import read_image
    from engine.fuse_folder import OUTPUT_EXTENSIONS

    reference = tmp_path / "png"
    assert _run(checkpoint, *pairs, reference) == 0
    for ext in OUTPUT_EXTENSIONS[1:]:
        out = tmp_path / ext[1:]
        assert _run(checkpoint, *pairs, out, "--ext", ext) == 0
        np.testing.assert_array_equal(read_image(out / f"a{ext}"), read_image(reference / "a.png"))


def test_unwritable_output_is_found_before_fusing(checkpoint, pairs, tmp_path, capsys, monkeypatch):
    import engine.fuse_folder as fuse_module

    def no_fusing(*args, **kwargs):
        raise AssertionError("a pair was read before the output folder was checked")

    monkeypatch.setattr(fuse_module, "load_fusion_pair", no_fusing)
    read_only, fresh = tmp_path / "read_only", tmp_path / "fresh"
    refused = {fresh / "npy"}  # stands for a folder that cannot be written into
    if os.geteuid() == 0:  # root writes anywhere: refuse as the kernel refuses everyone else
        refused.add(read_only)
    real = fuse_module.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 — tempfile's name
        if Path(dir) in refused:
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(fuse_module.tempfile, "mkstemp", mkstemp)
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        assert _run(checkpoint, *pairs, read_only) == 2
        err = capsys.readouterr().err
        assert f"cannot write into output folder {read_only}: Permission denied" in err and "Traceback" not in err
    finally:
        read_only.chmod(0o755)
    assert _run(checkpoint, *pairs, fresh, "--save-npy") == 2
    assert f"cannot write into output folder {fresh / 'npy'}" in capsys.readouterr().err
    assert not fresh.exists()  # the folders made for the check are removed: no output folder of a run that never ran
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "maps").write_text("a file where the maps folder goes")
    assert _run(checkpoint, *pairs, blocked, "--save-maps") == 2
    assert f"cannot create output folder {blocked / 'maps'}" in capsys.readouterr().err
    assert [p.name for p in blocked.iterdir()] == ["maps"]


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
    (out / "maps" / "a_w_ir.npy").mkdir(parents=True)  # pair a's map cannot be written (the folders can)
    assert _run(checkpoint, *pairs, out, "--save-npy", "--save-maps") == 1
    err = capsys.readouterr().err
    assert "a_w_ir.npy" in err and "failed: a" in err and (out / "b.png").exists()
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
    # the regions the attribution used are written beside the maps: here exactly the labels, plus a colour rendering
    regions = cv2.imread(str(out / "maps" / "a_regions.png"), cv2.IMREAD_UNCHANGED)
    assert regions.dtype == np.uint8 and regions.shape == label.shape and np.array_equal(regions, label)
    colour = cv2.cvtColor(cv2.imread(str(out / "maps" / "a_regions_color.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(colour, colorize_labels(label))
    # and why each region got its weight: Eq. 8 from the recorded attributions gives the region's w_ir
    record = json.loads((out / "maps" / "a_attribution.json").read_text())
    assert not record["pooled_over_batch"]
    assert [r["class"] for r in record["regions"]] == np.unique(label).tolist()
    for r in record["regions"]:
        assert r["pixels"] == int((label == r["class"]).sum())
        relu_ir, relu_vi = max(r["a_ir"], 0.0), max(r["a_vi"], 0.0)
        assert r["w_ir"] == pytest.approx((relu_ir + 1e-8) / (relu_ir + relu_vi + 2e-8), abs=1e-5)
        assert r["w_ir"] == pytest.approx(float(w_ir[label == r["class"]].mean()), abs=1e-6)


def test_attribution_records_are_written_only_where_weights_were_attributed(checkpoint, pairs, tmp_path):
    out = tmp_path / "ig"
    assert _run(checkpoint, *pairs, out, "--save-maps") == 0
    assert sorted(p.name for p in (out / "maps").glob("*_attribution.json")) == [f"{n}_attribution.json" for n in "abc"]
    uniform = tmp_path / "uniform"  # the ablation attributes nothing: no record that would read as a_ir = a_vi = 0
    assert _run(checkpoint, *pairs, uniform, "--save-maps", "--set", "attribution.weights=uniform") == 0
    assert np.all(np.load(uniform / "maps" / "a_w_ir.npy") == 0.5) and (uniform / "maps" / "a_regions.png").exists()
    assert not list((uniform / "maps").glob("*_attribution.json"))


def test_attribution_record_of_pooled_attributions_skips_the_ignore_value():
    """Release row 5 pools a_ir, a_vi over the batch ((C,) for every image); label pixels of the ignore value have no
    region and are left out of the record."""
    regions = torch.tensor([[[0, 0, 2], [2, 255, 2]], [[1, 1, 1], [1, 1, 1]]])
    a_ir, a_vi = torch.tensor([-1.0, 2.0, 3.0]), torch.tensor([-2.0, 0.0, 1.0])
    w_ir = torch.tensor([[0.5, 0.5, 0.75], [0.75, 0.5, 0.75]]).expand(2, 1, 2, 3)
    image = torch.zeros(2, 1, 2, 3)
    result = UAAFusionOutput(fused=image, initial=image, stages=[], attention=[], w_ir=w_ir, w_vi=1 - w_ir,
                             regions=regions, a_ir=a_ir, a_vi=a_vi)
    first = json.loads(attribution_record(result, 0))
    assert first == {"pooled_over_batch": True, "regions": [
        {"class": 0, "pixels": 2, "a_ir": -1.0, "a_vi": -2.0, "w_ir": 0.5},
        {"class": 2, "pixels": 3, "a_ir": 3.0, "a_vi": 1.0, "w_ir": 0.75}]}
    second = json.loads(attribution_record(result, 1))["regions"]
    assert second == [{"class": 1, "pixels": 6, "a_ir": 2.0, "a_vi": 0.0, "w_ir": 0.625}]


def test_labels_with_class_ids_the_model_does_not_have_are_named(checkpoint, tmp_path, capsys):
    """The tiny model has 4 classes and ignores 255: a label holding 4, 42, 200 or 60000 (16-bit) names its file and
    the ids, that pair is skipped (not fused with w = 0.5 there), and the others are fused."""
    ir, vi = pair_folders(tmp_path, ["a", "b", "c", "d"])
    labels = tmp_path / "labels"
    base = (gray(7) // 64).astype(np.uint8)  # classes 0..3
    foreign = base.copy()
    foreign[:2, :2] = [[4, 42], [200, 255]]
    write_image(labels / "a.png", foreign)
    write_image(labels / "b.png", np.where(base == 1, 60000, base.astype(np.uint16)).astype(np.uint16))
    ignored = base.copy()
    ignored[:5] = 255  # the ignore value is allowed
    write_image(labels / "c.png", ignored)
    write_image(labels / "d.png", base)
    out = tmp_path / "out"
    assert _run(checkpoint, ir, vi, out, "--labels", str(labels)) == 1
    captured = capsys.readouterr()
    assert "a.png' holds class ids the model does not have: 4, 42, 200 (its classes are 0..3" in captured.err
    assert "b.png' holds class ids the model does not have: 60000" in captured.err
    assert "failed: c" not in captured.err and "2 failed" in captured.out
    assert sorted(p.name for p in out.glob("*.png")) == ["c.png", "d.png"]


def test_save_maps_writes_the_predicted_regions(checkpoint, pairs, tmp_path):
    """Without labels the regions are the segmenter's argmax on I^(0) = (ir + vi) / 2, as the model computed them."""
    out = tmp_path / "out"
    assert _run(checkpoint, *pairs, out, "--save-maps") == 0
    model, _ = load_model_from_checkpoint(checkpoint)
    sample = load_fusion_pair(pairs[0] / "a.png", pairs[1] / "a.png")
    ir, vi = (torch.from_numpy(sample[key])[None, None] for key in ("ir", "vi_y"))
    expected = segment(model.segmenter.eval(), (ir + vi) / 2).argmax(dim=1)[0].numpy()
    regions = cv2.imread(str(out / "maps" / "a_regions.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(regions, expected)


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


def test_a_model_file_loads_without_its_encoder_weights_source(tmp_path):
    """Every weight of a model file comes from the file: the initial encoder weights its config names (a package, a
    local file) are neither read nor needed; the payload keeps the config as written."""
    from engine.checkpoint import save_checkpoint

    path = write_tiny_checkpoint(tmp_path / "named.pt")
    written = torch.load(path, map_location="cpu", weights_only=False)
    written["config"]["segmenter"]["encoder_weights"] = str(tmp_path / "gone.pt")
    save_checkpoint(path, {k: v for k, v in written.items() if k != "format"})
    model, payload = load_model_from_checkpoint(path)
    saved = written["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert payload["config"]["segmenter"]["encoder_weights"] == str(tmp_path / "gone.pt")


def test_region_attributions_list_each_class_present_once():
    """Golden values: classes in order of index, the ignore value (255) and classes without a region skipped, each
    region's pixels, its a_ir / a_vi as given and the mean of w_ir over its pixels."""
    regions = np.array([[0, 0, 2], [255, 2, 2]])
    w_ir = np.array([[0.2, 0.4, 1.0], [0.9, 0.5, 0.0]], dtype=np.float32)
    entries = region_attributions(regions, np.array([0.5, -1.0, 2.0]), np.array([-0.25, 3.0, 1.0]), w_ir)
    assert [(e["class"], e["pixels"], e["a_ir"], e["a_vi"]) for e in entries] == [(0, 2, 0.5, -0.25), (2, 3, 2.0, 1.0)]
    assert [e["w_ir"] for e in entries] == pytest.approx([0.3, 0.5], abs=1e-7)
