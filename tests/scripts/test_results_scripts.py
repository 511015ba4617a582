"""The real-data comparison, the demo and the model export, on tiny generated folders with a tiny model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import load_checkpoint, load_model_from_checkpoint, save_checkpoint
from engine.config import load_config
from models.uaafusion import build_model
from scripts import demo, export_model, real_results
from tests.helpers.factories import TINY_MODEL, gray, pair_folders, write_image, write_tiny_checkpoint


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """root/{ir,vi,label,SeAFusion} with three 48×64 scenes and 9 classes, like ../shared/data/MSRS_labelled."""
    root = tmp_path_factory.mktemp("labelled")
    names = ["00001D", "00002N", "00003D"]
    pair_folders(root, names, h=48, w=64)
    for i, name in enumerate(names):
        write_image(root / "label" / f"{name}.png", (gray(40 + i, 48, 64) % 9).astype(np.uint8))
        write_image(root / "SeAFusion" / f"{name}.png", np.dstack([gray(60 + i, 48, 64)] * 3))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", num_classes=9)


def test_real_results_writes_tables_json_and_figure(labelled, checkpoint, tmp_path, capsys):
    out, figure = tmp_path / "out", tmp_path / "fig.png"
    code = real_results.main(["--checkpoint", str(checkpoint), "--data", str(labelled), "--out", str(out),
                              "--figure", str(figure), "--count", "2", "--quiet"])
    assert code == 0
    assert figure.stat().st_size > 1000 and (out / "fused" / "maps").is_dir()
    document = json.loads((out / "results.json").read_text())
    rows = document["fusion_means"]
    assert list(rows) == ["infrared", "visible", "average", "SeAFusion", real_results.OURS]
    assert set(rows[real_results.OURS]) >= set(real_results.METRICS)
    seg = document["segmentation"]
    assert set(seg) == {"infrared", "visible", "average", "SeAFusion", real_results.OURS, real_results.REGIONS}
    assert all(len(s["iou"]) == 9 and 0 <= s["miou"] <= 1 and 0 <= s["miou_present"] <= 1 for s in seg.values())
    # the regions row is scored from the region maps the fuse wrote: recompute it from those files
    maps = out / "fused" / "maps"
    confusion = sum(real_results.confusion_matrix(real_results.read_label(maps / f"{n}_regions.png"),
                                                  real_results.read_label(labelled / "label" / f"{n}.png"), 9, 255)
                    for n in ("00001D", "00002N", "00003D"))
    expected = real_results.iou_summary(confusion)
    assert set(seg[real_results.REGIONS]) == set(expected)
    for key, value in expected.items():
        assert seg[real_results.REGIONS][key] == pytest.approx(value, nan_ok=True), key
    stats = document["attribution"]
    w_ir = [np.load(maps / f"{n}_w_ir.npy") for n in ("00001D", "00002N", "00003D")]
    share = np.mean([(np.abs(w - 0.5) > 0.05).mean() for w in w_ir])
    assert stats["means"]["share_off"] == pytest.approx(share)
    assert stats["w_ir_range"] == pytest.approx([min(w.min() for w in w_ir), max(w.max() for w in w_ir)])
    text = (out / "results.md").read_text()
    assert "SeAFusion" in text and "mIoU" in text and "person" in text and "regions per scene" in text
    per_class = stats["per_class"]
    regions = [real_results.read_label(maps / f"{n}_regions.png") for n in ("00001D", "00002N", "00003D")]
    for c, name in enumerate(document["class_names"]):
        shown = sum(bool((r == c).any()) for r in regions)
        assert per_class.get(name, {"scenes": 0})["scenes"] == shown
        if shown:
            row = per_class[name]
            assert row["ir"] + row["vi"] + row["neither"] == shown and f"| {name} | {shown} |" in text
    assert len(document["figure_scenes"]) == 2


def test_class_attribution_statistics_count_each_regions_median_weight(tmp_path):
    regions = np.zeros((4, 6), dtype=np.uint8)
    regions[:, 3:] = 2  # class 2 on the right half
    regions[0, 0] = 255  # no class
    w_ir = np.full((4, 6), 0.5)
    w_ir[:, 3:] = 0.9
    w_ir[0, 3] = 0.52  # one pixel of class 2 near 0.5: the median stays 0.9
    for name, scale in (("a", 1.0), ("b", -1.0)):  # scene b: class 2 favours visible (0.5 - 0.4)
        write_image(tmp_path / f"{name}_regions.png", regions)
        np.save(tmp_path / f"{name}_w_ir.npy", 0.5 + scale * (w_ir - 0.5))
    stats = real_results.class_attribution_statistics(tmp_path, ["a", "b"], ["bg", "one", "two"])
    assert list(stats) == ["bg", "two"]
    assert stats["bg"] == {"scenes": 2, "ir": 0, "vi": 0, "neither": 2, "no_source": None, "mean_w_ir": 0.5,
                           "pixel_share_off": 0.0}
    assert stats["two"]["scenes"] == 2 and stats["two"]["ir"] == 1 and stats["two"]["vi"] == 1
    assert stats["two"]["mean_w_ir"] == pytest.approx(0.5)
    assert stats["two"]["pixel_share_off"] == pytest.approx(22 / 24)
    table = real_results.class_attribution_table(stats)
    assert "| two | 2 | 1 | 1 | 0 | – | 0.50 | 92 % |" in table
    # with test.py's attribution records: the scenes where neither source raised the class score (both a <= 0)
    records = {"a": [(0, -1.0, -2.0), (2, 3.0, 0.0)], "b": [(0, 0.0, -0.5), (2, -1.0, 4.0)]}
    for name, regions in records.items():
        entries = [{"class": c, "pixels": 1, "a_ir": a_ir, "a_vi": a_vi, "w_ir": 0.5} for c, a_ir, a_vi in regions]
        (tmp_path / f"{name}_attribution.json").write_text(json.dumps({"pooled_over_batch": False,
                                                                        "regions": entries}))
    stats = real_results.class_attribution_statistics(tmp_path, ["a", "b"], ["bg", "one", "two"])
    assert stats["bg"]["no_source"] == 2 and stats["two"]["no_source"] == 0
    assert "| bg | 2 | 0 | 0 | 2 | 2 | 0.50 | 0 % |" in real_results.class_attribution_table(stats)


def test_iou_summary_counts_only_present_classes_in_miou_present():
    confusion = np.array([[8, 2, 0], [1, 3, 0], [0, 1, 0]])  # class 2: labelled once, never predicted right
    summary = real_results.iou_summary(confusion)
    assert summary["iou"] == pytest.approx([8 / 11, 3 / 7, 0.0])
    assert summary["miou_present"] == pytest.approx((8 / 11 + 3 / 7) / 3)
    absent = real_results.iou_summary(np.array([[8, 2, 0], [1, 3, 1], [0, 0, 0]]))  # class 2 only predicted
    assert absent["iou"][2] == 0.0 and absent["miou"] == pytest.approx((8 / 11 + 3 / 7) / 3)
    assert absent["miou_present"] == pytest.approx((8 / 11 + 3 / 7) / 2)


def test_real_results_names_a_missing_folder(checkpoint, tmp_path, capsys):
    assert real_results.main(["--checkpoint", str(checkpoint), "--data", str(tmp_path), "--out",
                              str(tmp_path / "out")]) == 2
    assert "ir not found" in capsys.readouterr().err


def test_demo_fuses_the_samples_and_prints_the_table(labelled, checkpoint, tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--checkpoint", str(checkpoint), "--samples", str(labelled), "--out", str(out),
                      "--quiet"]) == 0
    printed = capsys.readouterr().out
    for row in ("infrared", "visible", "average", "SeAFusion", real_results.OURS):
        assert row in printed
    assert sorted(p.name for p in (out / "fused").glob("*.png")) == ["00001D.png", "00002N.png", "00003D.png"]
    assert (out / "comparison.png").is_file() and (out / "metrics.json").is_file()
    assert demo.main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert "is missing" in capsys.readouterr().err


def test_export_keeps_the_model_and_drops_the_training_state(tmp_path):
    cfg = load_config(None, TINY_MODEL)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=4)
    source = tmp_path / "last.pt"
    save_checkpoint(source, {"model": model.state_dict(), "config": cfg, "num_classes": 4, "class_names": list("abcd"),
                             "optimizers": {"joint": {"state": {}}}, "rng": {"torch": torch.get_rng_state()},
                             "history": [{"epoch": 1, "loss_total": 0.5}], "global_step": 7,
                             "calibration": {"tau": 0.5}})
    for half in (False, True):
        target = tmp_path / f"shipped_{half}.pt"
        assert export_model.main([str(source), str(target)] + (["--half"] if half else [])) == 0
        payload = torch.load(target, weights_only=True)
        assert "optimizers" not in payload and "rng" not in payload and payload["history"][0]["epoch"] == 1
        assert payload["exported_from"]["global_step"] == 7
        dtypes = {v.dtype for v in payload["model"].values() if torch.is_floating_point(v)}
        assert dtypes == ({torch.float16} if half else {torch.float32})
        loaded, _ = load_model_from_checkpoint(target)
        assert all(p.dtype == torch.float32 for p in loaded.parameters())  # float16 files load as float32
        for key, value in model.state_dict().items():
            tolerance = 1e-3 * max(value.abs().max().item(), 1.0) if half else 0.0
            torch.testing.assert_close(loaded.state_dict()[key].to(value.dtype), value, rtol=0, atol=tolerance)
    assert load_checkpoint(tmp_path / "shipped_False.pt")["class_names"] == list("abcd")
    assert payload["calibration"] == {"tau": 0.5}  # a calibrated model file stays one

    viewed = tmp_path / "viewed.pt"
    assert export_model.main([str(source), str(viewed), "--set", "attribution.region_scales=[1, 2]",
                              "--set", "attribution.region_flip=true"]) == 0
    stored = load_checkpoint(viewed)["config"]["attribution"]
    assert stored["region_scales"] == [1, 2] and stored["region_flip"] is True
    assert load_model_from_checkpoint(viewed)[0].attribution.region_scales == [1.0, 2.0]
    assert export_model.main([str(source), str(tmp_path / "bad.pt"), "--set", "attribution.nope=1"]) == 2
    assert not (tmp_path / "bad.pt").exists()


def test_export_can_put_another_segmenter_under_the_fusion_network(tmp_path):
    """``--segmenter``: the segmenter's weights come from a segmenter checkpoint, everything else from the source;
    the source's calibration record (of the replaced segmenter) is dropped; a segmenter that does not fit is refused."""
    cfg = load_config(None, TINY_MODEL)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=4)
    source = tmp_path / "model.pt"
    save_checkpoint(source, {"model": model.state_dict(), "config": cfg, "num_classes": 4,
                             "calibration": {"tau": 0.5}})
    torch.manual_seed(1)
    other = build_model(cfg, num_classes=4).segmenter.state_dict()
    segmenter_file = tmp_path / "segmenter.pt"
    save_checkpoint(segmenter_file, {"segmenter": other, "num_classes": 4})
    target = tmp_path / "assembled.pt"
    assert export_model.main([str(source), str(target), "--segmenter", str(segmenter_file)]) == 0
    payload = load_checkpoint(target)
    assert "calibration" not in payload and payload["exported_from"]["segmenter"]["file"] == "segmenter.pt"
    loaded, _ = load_model_from_checkpoint(target)
    for key, value in loaded.segmenter.state_dict().items():
        assert torch.equal(value, other[key]), key
    for key, value in loaded.fusion.state_dict().items():
        assert torch.equal(value, model.fusion.state_dict()[key]), key
    assert any(not torch.equal(v, model.segmenter.state_dict()[k]) for k, v in other.items() if v.is_floating_point())

    misfit = tmp_path / "misfit.pt"
    save_checkpoint(misfit, {"segmenter": build_model(cfg, num_classes=6).segmenter.state_dict(), "num_classes": 6})
    assert export_model.main([str(source), str(tmp_path / "bad.pt"), "--segmenter", str(misfit)]) == 2
    assert not (tmp_path / "bad.pt").exists()
