"""The one table of layouts (MFNet and MSRS_labelled load with their 9 classes), tiles mode and its flips."""
from __future__ import annotations

import numpy as np
import pytest

from data.check import check_dataset
from data.datasets import MFNetDataset, build_dataset
from data.layouts import LAYOUTS, MFNET_CLASSES, MSRS_CLASSES, detect_layout
from tests.helpers.factories import gray, pair_folders, write_image


def test_mfnet_classes_are_the_msrs_classes():
    assert MFNET_CLASSES == MSRS_CLASSES == ("unlabelled", "car", "person", "bike", "curve", "car_stop",
                                             "guardrail", "color_cone", "bump")
    assert LAYOUTS["mfnet"].folders == ("ir", "vi", "label") and not LAYOUTS["mfnet"].split_folders


@pytest.mark.parametrize("name,count", [("MFNet", 170), ("MSRS_labelled", 30)])
def test_shared_labelled_sets_load_and_check(shared_data, name, count):
    root = shared_data / name
    if not (root / "label").is_dir():
        pytest.skip(f"{root} not found")
    dataset = build_dataset({"name": "mfnet", "root": str(root)}, "train", mode="full")
    assert len(dataset) == count and dataset.class_names == list(MFNET_CLASSES)
    sample = dataset[0]
    assert sample["ir"].shape == (1, 480, 640) and int(sample["label"].max()) < 9
    assert detect_layout(root) == "mfnet"
    report = check_dataset(root)
    assert report.ok, str(report)
    empty = [w for w in report.warnings if w.kind == "empty-label"]
    assert len(empty) == (2 if name == "MFNet" else 0)  # two MFNet scenes have nothing labelled: warned, not failed


def test_tiles_cover_every_full_tile_and_flip_deterministically(tmp_path):
    pair_folders(tmp_path, ["a", "b"], h=70, w=100)
    for i, name in enumerate(["a", "b"]):
        write_image(tmp_path / "label" / f"{name}.png", (gray(30 + i, 70, 100) % 9).astype(np.uint8))
    plain = MFNetDataset(tmp_path, mode="tiles", patch_size=32, seed=0, flips=False)
    assert len(plain) == 2 * (70 // 32) * (100 // 32)  # 2 x 3 tiles per image; remainders dropped
    first = plain.load_pair(0)
    np.testing.assert_array_equal(plain[0]["ir"][0].numpy(), first["ir"][:32, :32])
    np.testing.assert_array_equal(plain[4]["label"].numpy(), first["label"][32:64, 32:64])
    flipped = MFNetDataset(tmp_path, mode="tiles", patch_size=32, seed=0, flips=True)
    again = MFNetDataset(tmp_path, mode="tiles", patch_size=32, seed=0, flips=True)
    changed = 0
    for i in range(len(flipped)):
        a, b, ref = flipped[i], again[i], plain[i]
        np.testing.assert_array_equal(a["ir"].numpy(), b["ir"].numpy())  # a function of (seed, epoch, index)
        tile = ref["ir"][0].numpy()
        options = [tile, tile[:, ::-1], tile[::-1, :], tile[::-1, ::-1]]
        assert any(np.array_equal(a["ir"][0].numpy(), o) for o in options)
        assert any(np.array_equal(a["label"].numpy(), o) for o in
                   [ref["label"].numpy(), ref["label"].numpy()[:, ::-1], ref["label"].numpy()[::-1, :],
                    ref["label"].numpy()[::-1, ::-1]])
        changed += not np.array_equal(a["ir"][0].numpy(), tile)
    assert changed > 0
    with pytest.raises(ValueError, match="smaller than one"):
        MFNetDataset(tmp_path, mode="tiles", patch_size=128)


def test_tiles_without_vertical_flips_keep_the_horizontal_flips(tmp_path):
    """vertical_flips=False in tiles mode: every tile is itself or its mirror image, and it is mirrored exactly
    where the default draws (same seed) mirror it, upside down or not."""
    pair_folders(tmp_path, ["a", "b"], h=70, w=100)
    for i, name in enumerate(["a", "b"]):
        write_image(tmp_path / "label" / f"{name}.png", (gray(30 + i, 70, 100) % 9).astype(np.uint8))
    plain = MFNetDataset(tmp_path, mode="tiles", patch_size=32, seed=0, flips=False)
    both = MFNetDataset(tmp_path, mode="tiles", patch_size=32, seed=0, flips=True)
    horizontal = MFNetDataset(tmp_path, mode="tiles", patch_size=32, seed=0, flips=True, vertical_flips=False)
    mirrored = 0
    for i in range(len(plain)):
        tile, flipped, default = plain[i]["ir"][0].numpy(), horizontal[i]["ir"][0].numpy(), both[i]["ir"][0].numpy()
        default_mirrored = (np.array_equal(default, tile[:, ::-1]) or np.array_equal(default, tile[::-1, ::-1]))
        expected = tile[:, ::-1] if default_mirrored else tile
        np.testing.assert_array_equal(flipped, expected)
        np.testing.assert_array_equal(horizontal[i]["label"].numpy(),
                                      plain[i]["label"].numpy()[:, ::-1] if default_mirrored else plain[i]["label"])
        mirrored += default_mirrored
    assert 0 < mirrored < len(plain)
