"""Histogram matching of infrared images (data/tone.py) and its dataset switch."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.datasets import build_dataset
from data.tone import LEVELS, ToneReference, level_histogram, matching_table
from engine.config import ConfigError, apply_overrides, load_config

REPO = Path(__file__).resolve().parents[2]


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix, array)
    assert ok
    encoded.tofile(str(path))


def _counts(levels):
    return np.bincount(np.asarray(levels), minlength=LEVELS).astype(np.float64)


def test_a_single_level_goes_to_the_reference_median_golden():
    # reference: one pixel at 10, one at 30 -> shares 0.25 and 0.75; a one-level image sits at share 0.5 -> 20
    table = matching_table(_counts([100, 100, 100]), _counts([10, 30]))
    assert table[100] * 255 == pytest.approx(20.0, abs=1e-12)


def test_two_level_golden_values():
    # source: 3 pixels at 50, 1 at 200 -> shares 0.375 and 0.875; reference: levels 0, 100, 200, 250 once each ->
    # shares 0.125, 0.375, 0.625, 0.875: 50 -> 100 and 200 -> 250 exactly
    table = matching_table(_counts([50, 50, 50, 200]), _counts([0, 100, 200, 250]))
    assert table[50] * 255 == pytest.approx(100.0, abs=1e-12)
    assert table[200] * 255 == pytest.approx(250.0, abs=1e-12)


def test_matching_an_image_onto_its_own_histogram_changes_nothing():
    rng = np.random.default_rng(0)
    levels = rng.integers(20, 200, size=(30, 40))
    image = levels / 255.0
    counts = level_histogram([image])
    table = matching_table(counts, counts)
    np.testing.assert_allclose(table[levels] * 255, levels, atol=1e-9)


def test_the_table_is_monotone_and_the_matched_quantiles_follow_the_reference():
    rng = np.random.default_rng(1)
    source = np.clip(rng.normal(0.6, 0.08, size=(120, 160)), 0, 1)        # bright, low contrast (raw thermal)
    reference = np.clip(rng.gamma(2.0, 0.05, size=(120, 160)), 0, 1)      # dark, long bright tail (MSRS)
    table = matching_table(level_histogram([source]), level_histogram([reference]))
    assert np.all(np.diff(table) >= 0)
    matched = table[np.rint(source * 255).astype(int)]
    for q in (10, 50, 90):
        assert abs(np.percentile(matched, q) - np.percentile(reference, q)) < 0.02
    assert abs(np.percentile(source, 50) - np.percentile(reference, 50)) > 0.4  # the match did move it


def test_bad_histograms_are_refused():
    with pytest.raises(ValueError, match="256 bins"):
        matching_table(np.ones(10), np.ones(LEVELS))
    with pytest.raises(ValueError, match="non-empty"):
        matching_table(np.zeros(LEVELS), np.ones(LEVELS))


def test_tone_reference_reads_files_and_folders_and_names_a_missing_path(tmp_path):
    _save(tmp_path / "ref" / "a.png", np.full((4, 4), 10, np.uint8))
    _save(tmp_path / "ref" / "b.png", np.full((4, 4), 30, np.uint8))
    from_folder = ToneReference(tmp_path / "ref")
    from_files = ToneReference([tmp_path / "ref" / "a.png", str(tmp_path / "ref" / "b.png")])
    np.testing.assert_array_equal(from_folder.counts, from_files.counts)
    assert from_folder.counts[10] == 16 and from_folder.counts[30] == 16
    assert from_folder.match(np.full((2, 3), 0.7, np.float32)) == pytest.approx(20 / 255)
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        ToneReference([tmp_path / "nowhere.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ToneReference(tmp_path / "empty")


def test_dataset_matches_the_infrared_only(tmp_path):
    rng = np.random.default_rng(2)
    ir = rng.integers(100, 160, size=(24, 32)).astype(np.uint8)
    vi = rng.integers(0, 255, size=(24, 32)).astype(np.uint8)
    _save(tmp_path / "ir" / "s.png", ir)
    _save(tmp_path / "vi" / "s.png", vi)
    reference = rng.integers(0, 60, size=(24, 32)).astype(np.uint8)
    _save(tmp_path / "ref" / "r.png", reference)
    cfg = {"name": "folders", "root": tmp_path, "ir_dir": "ir", "vi_dir": "vi", "mode": "full"}
    plain = build_dataset(cfg, "test")[0]
    matched = build_dataset({**cfg, "ir_tone_reference": [tmp_path / "ref"]}, "test")[0]
    assert np.array_equal(matched["vi"].numpy(), plain["vi"].numpy())
    expected = ToneReference(tmp_path / "ref").match(ir / 255.0)
    np.testing.assert_allclose(matched["ir"][0].numpy(), expected, atol=1e-7)
    assert matched["ir"].max() <= 60 / 255 + 1e-6 < plain["ir"].min()


def test_a_random_crop_is_the_same_crop_of_the_toned_image_and_the_cache_tones_once(tmp_path):
    # the whole image is matched before cropping (a crop's own histogram would give another table), and a cached
    # sample is not matched a second time
    rng = np.random.default_rng(4)
    ir = np.concatenate([rng.integers(90, 110, size=(24, 20)), rng.integers(150, 250, size=(24, 20))], axis=1)
    _save(tmp_path / "ir" / "s.png", ir.astype(np.uint8))
    _save(tmp_path / "vi" / "s.png", rng.integers(0, 255, size=(24, 40)).astype(np.uint8))
    _save(tmp_path / "ref" / "r.png", rng.integers(0, 60, size=(24, 32)).astype(np.uint8))
    cfg = {"name": "folders", "root": tmp_path, "ir_dir": "ir", "vi_dir": "vi", "ir_tone_reference": tmp_path / "ref"}
    full = build_dataset({**cfg, "mode": "full"}, "test")[0]["ir"][0].numpy()
    crops = build_dataset({**cfg, "mode": "random_crop", "patch_size": 8, "flips": False, "seed": 0}, "train")
    crop = crops[0]["ir"][0].numpy()
    hits = [(top, left) for top in range(24 - 7) for left in range(40 - 7)
            if np.array_equal(full[top:top + 8, left:left + 8], crop)]
    assert hits, "the crop is not a window of the toned full image"
    cached = build_dataset({**cfg, "mode": "full", "cache": True}, "test")
    first, second = cached[0]["ir"].numpy(), cached[0]["ir"].numpy()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[0], full)


def test_a_reference_with_few_levels_is_warned_about(tmp_path, caplog):
    _save(tmp_path / "flat.png", np.full((8, 8), 40, np.uint8))
    with caplog.at_level("WARNING"):
        ToneReference(tmp_path / "flat.png")
    assert "1 of 256 levels" in caplog.text


def test_trainer_tones_the_training_infrared_but_not_the_validation_set(synthetic_root, tmp_path):
    from engine.trainer import Trainer
    from tests.helpers.factories import tiny_train_config

    reference = tmp_path / "ref.png"
    _save(reference, np.random.default_rng(3).integers(0, 40, size=(16, 16)).astype(np.uint8))
    cfg = tiny_train_config(synthetic_root, f"data.ir_tone_reference=[{reference}]")
    trainer = Trainer(cfg, tmp_path / "run", show_progress=False)
    assert trainer.train_set.ir_tone is not None
    assert trainer.train_set[0]["ir"].max() <= 40 / 255 + 1e-6
    assert trainer.val_set.dataset.ir_tone is None


def test_tone_figure_draws_the_matching(tmp_path):
    from scripts.tone_figure import main

    rng = np.random.default_rng(1)
    _save(tmp_path / "ref.png", rng.integers(0, 60, size=(24, 32)).astype(np.uint8))
    _save(tmp_path / "raw.png", rng.integers(60, 120, size=(24, 32)).astype(np.uint8))
    figure = tmp_path / "out" / "tone.png"
    assert main(["--reference", str(tmp_path / "ref.png"), "--images", str(tmp_path / "raw.png"),
                 "--figure", str(figure)]) == 0
    assert cv2.imread(str(figure)) is not None
    assert not list(figure.parent.glob(".*"))  # no temporary file left behind
    assert main(["--reference", str(tmp_path / "nowhere.png"), "--images", str(tmp_path / "raw.png"),
                 "--figure", str(figure)]) == 2
    assert main(["--reference", str(tmp_path / "ref.png"), "--images", str(tmp_path / "raw.png"),
                 "--figure", str(tmp_path / "tone.jpg")]) == 2


def test_a_config_with_a_tone_reference_can_switch_it_off_on_the_command_line():
    cfg = load_config(REPO / "configs" / "mfnet_tone.yaml", ["data.ir_tone_reference=null"])
    assert cfg["data"]["ir_tone_reference"] is None
    assert len(load_config(REPO / "configs" / "mfnet_tone.yaml")["data"]["ir_tone_reference"]) == 4
    with pytest.raises(ConfigError, match="ir_tone_reference"):
        load_config(REPO / "configs" / "mfnet_tone.yaml", ["data.ir_tone_reference=3"])


def test_the_default_models_config_is_the_frozen_toned_one_with_another_segmenter_and_nothing_else():
    toned = load_config(REPO / "configs" / "mfnet_tone.yaml")
    frozen = load_config(REPO / "configs" / "mfnet_tone_frozen.yaml")
    avg = load_config(REPO / "configs" / "mfnet_tone_frozen_avg.yaml")
    assert avg["train"]["segmenter_checkpoint"] == "runs/segmenter_tone_avg/segmenter.pt"
    avg["train"]["segmenter_checkpoint"] = frozen["train"]["segmenter_checkpoint"]
    assert avg == frozen
    assert toned["train"]["segmenter_batchnorm"] == "train" and frozen["train"]["segmenter_batchnorm"] == "frozen"
    frozen["train"]["segmenter_batchnorm"] = "train"
    assert frozen == toned
    # the shipped model (since session 14) was trained with exactly configs/mfnet_fresh.yaml and its header's start:
    # configs/mfnet_tone_frozen_avg.yaml with the segmenter pre-trained after the crop fix
    fresh = load_config(REPO / "configs" / "mfnet_fresh.yaml")
    assert fresh["train"]["segmenter_checkpoint"] == "runs/segmenter_fresh/segmenter.pt"
    fresh["train"]["segmenter_checkpoint"] = "runs/segmenter_tone_avg/segmenter.pt"
    assert fresh == load_config(REPO / "configs" / "mfnet_tone_frozen_avg.yaml")
    # session 15's longer pre-training (not shipped) changes only the segmenter file
    long = load_config(REPO / "configs" / "mfnet_long.yaml")
    assert long["train"]["segmenter_checkpoint"] == "runs/segmenter_long/segmenter.pt"
    long["train"]["segmenter_checkpoint"] = "runs/segmenter_fresh/segmenter.pt"
    assert long == load_config(REPO / "configs" / "mfnet_fresh.yaml")
    shipped = torch.load(REPO / "checkpoints" / "uaafusion_mfnet.pt", map_location="cpu", weights_only=True)
    # (its saved config predates data.vertical_flips / scale_range / crops_per_scene: read with their defaults; since
    # session 21 its segmenter is session 18's pre-trained one, put in by scripts.export_model with the region views)
    shipped_overrides = ["train.init_checkpoint=checkpoints/uaafusion_mfnet_imagenet.pt",
                         "attribution.region_scales=[1, 1.5, 2]", "attribution.region_flip=true"]
    assert apply_overrides(shipped["config"]) == load_config(REPO / "configs" / "mfnet_fresh.yaml", shipped_overrides)
    # session 20's joint-stage scale jitter (not shipped) changes the training samples and the segmenter file only
    jitter = load_config(REPO / "configs" / "mfnet_jitter.yaml")
    assert jitter["train"]["segmenter_checkpoint"] == "runs/segmenter_aug/segmenter.pt"
    assert {k: jitter["data"][k] for k in ("mode", "flips", "vertical_flips", "scale_range", "crops_per_scene")} == {
        "mode": "random_crop", "flips": True, "vertical_flips": False, "scale_range": [0.5, 2.0],
        "crops_per_scene": 15}
    jitter["train"]["segmenter_checkpoint"] = "runs/segmenter_fresh/segmenter.pt"
    jitter["data"].update(mode="tiles", vertical_flips=True, scale_range=None, crops_per_scene=1)
    assert jitter == load_config(REPO / "configs" / "mfnet_fresh.yaml")
