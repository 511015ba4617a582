import warnings

import cv2
import numpy as np
import pytest
import torch

from data.datasets import (
    FMB_CLASSES,
    MSRS_CLASSES,
    FMBDataset,
    LabelRangeWarning,
    MSRSDataset,
    PairedFolderDataset,
    RoadSceneDataset,
    UnpairedFilesWarning,
    build_dataset,
    cut_release_patches,
    pair_files,
    patch_spread,
    random_crop_flip,
    random_rescale,
    release_patch_origins,
)

H, W, CELL, NC = 40, 48, 4, 5


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix, array)
    assert ok
    encoded.tofile(str(path))


def _position_coded(h=H, w=W):
    """ir encodes x, vi encodes y (exactly, in 8 bits), label is a function of the position."""
    yy, xx = np.mgrid[0:h, 0:w]
    ir = (xx * 5).astype(np.uint8)
    vi = (yy * 5).astype(np.uint8)
    label = ((xx // CELL + yy // CELL) % NC).astype(np.uint8)
    return ir, vi, label


def _decode(sample):
    x = np.rint(sample["ir"][0].numpy() * 255 / 5).astype(int)
    y = np.rint(sample["vi"][0].numpy() * 255 / 5).astype(int)
    return x, y


@pytest.fixture
def coded_folders(tmp_path):
    ir, vi, label = _position_coded()
    for stem in ("a", "b", "c"):
        _save(tmp_path / "ir" / f"{stem}.png", ir)
        _save(tmp_path / "vi" / f"{stem}.png", cv2.cvtColor(vi, cv2.COLOR_GRAY2BGR))
        _save(tmp_path / "label" / f"{stem}.png", label)
    return tmp_path


def _folders(root, **kwargs):
    return PairedFolderDataset(root / "ir", root / "vi", root / "label", num_classes=NC, **kwargs)


def test_pairing_by_stem_across_extensions_and_missing_partners(tmp_path):
    img = np.zeros((4, 4), np.uint8)
    _save(tmp_path / "ir" / "one.png", img)
    _save(tmp_path / "vi" / "one.JPG", img)
    _save(tmp_path / "lab" / "one.bmp", img)
    _save(tmp_path / "ir" / "two.tif", img)
    _save(tmp_path / "vi" / "two.jpeg", img)
    _save(tmp_path / "lab" / "two.png", img)
    _save(tmp_path / "ir" / "only_ir.png", img)
    _save(tmp_path / "vi" / "only_vi.bmp", img)
    _save(tmp_path / "ir" / "no_label.png", img)
    _save(tmp_path / "vi" / "no_label.png", img)
    (tmp_path / "ir" / "notes.txt").write_text("ignored")
    pairs, problems = pair_files(tmp_path / "ir", tmp_path / "vi", tmp_path / "lab")
    assert [p.name for p in pairs] == ["one", "two"]
    assert pairs[0].vi.name == "one.JPG" and pairs[1].ir.name == "two.tif" and pairs[0].label.name == "one.bmp"
    text = "\n".join(str(p) for p in problems)
    assert "only_ir.png" in text and "no visible image named 'only_ir.*'" in text
    assert "only_vi.bmp" in text and "no infrared image named 'only_vi.*'" in text
    assert "missing-label" in text and "no_label" in text
    assert len(problems) == 3


def test_dataset_warns_about_unpaired_files_and_strict_raises(coded_folders):
    _save(coded_folders / "ir" / "lonely.png", np.zeros((H, W), np.uint8))
    with pytest.warns(UnpairedFilesWarning, match="lonely.png"):
        dataset = _folders(coded_folders)
    assert len(dataset) == 3 and any("lonely" in str(p) for p in dataset.problems)
    with pytest.raises(ValueError, match="lonely.png"):
        _folders(coded_folders, strict=True)


def test_full_mode_sample_dict(coded_folders):
    sample = _folders(coded_folders)[0]
    assert set(sample) == {"ir", "vi", "label", "name"}
    assert sample["ir"].shape == (1, H, W) and sample["ir"].dtype == torch.float32
    assert sample["vi"].shape == (1, H, W) and sample["label"].shape == (H, W)
    assert sample["label"].dtype == torch.int64 and sample["name"] == "a"
    assert 0.0 <= float(sample["ir"].min()) and float(sample["vi"].max()) <= 1.0


def test_out_of_range_labels_map_to_ignore_with_one_warning(coded_folders):
    label = _position_coded()[2].copy()
    label[0, :3] = 255
    label[1, 0] = 9
    _save(coded_folders / "label" / "b.png", label)
    _save(coded_folders / "label" / "c.png", label)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = _folders(coded_folders, ignore_index=200)
        samples = [dataset[i] for i in range(len(dataset))]
    range_warnings = [w for w in caught if issubclass(w.category, LabelRangeWarning)]
    assert len(range_warnings) == 1
    message = str(range_warnings[0].message)
    assert "2 of 3 label files" in message and "b.png" in message and "ignore index 200" in message
    assert samples[1]["label"][0, 0] == 200 and samples[1]["label"][1, 0] == 200
    assert int(samples[1]["label"][2, 0]) == int(label[2, 0])
    assert int(samples[0]["label"].max()) < NC


def test_lazy_label_warning_without_scan(coded_folders):
    label = _position_coded()[2].copy()
    label[0, 0] = 255
    for stem in ("a", "b"):
        _save(coded_folders / "label" / f"{stem}.png", label)
    dataset = _folders(coded_folders, scan_labels=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(len(dataset)):
            dataset[i]
    assert len([w for w in caught if issubclass(w.category, LabelRangeWarning)]) == 1


def test_ignore_index_must_not_be_a_class(coded_folders):
    with pytest.raises(ValueError, match="ignore_index"):
        _folders(coded_folders, ignore_index=2)


def test_random_crops_keep_ir_vi_label_aligned(coded_folders):
    dataset = _folders(coded_folders, mode="random_crop", patch_size=16, seed=7)
    flipped_h = flipped_v = 0
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            sample = dataset[i]
            assert sample["ir"].shape == (1, 16, 16) and sample["label"].shape == (16, 16)
            x, y = _decode(sample)
            np.testing.assert_array_equal(sample["label"].numpy(), (x // CELL + y // CELL) % NC)
            flipped_h += int(x[0, 0] > x[0, -1])
            flipped_v += int(y[0, 0] > y[-1, 0])
            # still a contiguous window: coordinates step by exactly one pixel
            assert np.all(np.abs(np.diff(x, axis=1)) == 1) and np.all(np.abs(np.diff(y, axis=0)) == 1)
    assert 0 < flipped_h < 12 and 0 < flipped_v < 12


def test_random_crops_are_deterministic_by_seed(coded_folders):
    first = _folders(coded_folders, mode="random_crop", patch_size=16, seed=3)
    second = _folders(coded_folders, mode="random_crop", patch_size=16, seed=3)
    for i in range(3):
        assert torch.equal(first[i]["ir"], second[i]["ir"]) and torch.equal(first[i]["vi"], second[i]["vi"])
    other = _folders(coded_folders, mode="random_crop", patch_size=16, seed=4)
    assert any(not torch.equal(first[i]["ir"], other[i]["ir"]) or not torch.equal(first[i]["vi"], other[i]["vi"])
               for i in range(3))
    second.set_epoch(1)
    assert any(not torch.equal(first[i]["ir"], second[i]["ir"]) or not torch.equal(first[i]["vi"], second[i]["vi"])
               for i in range(3))
    # Without a seed the global torch RNG decides (what DataLoader workers seed).
    unseeded = _folders(coded_folders, mode="random_crop", patch_size=16)
    torch.manual_seed(11)
    a = unseeded[0]["ir"]
    torch.manual_seed(11)
    assert torch.equal(a, unseeded[0]["ir"])


def test_random_crop_flip_with_generator_and_padding():
    ir = np.random.default_rng(0).random((5, 6), dtype=np.float32)
    vi = ir * 0.5
    label = np.ones((5, 6), np.int64)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    out1 = random_crop_flip(ir, vi, label, 8, generator=g1, ignore_index=255)
    out2 = random_crop_flip(ir, vi, label, 8, generator=g2, ignore_index=255)
    for a, b in zip(out1, out2, strict=True):
        np.testing.assert_array_equal(a, b)
    ir_c, vi_c, label_c = out1
    assert ir_c.shape == (8, 8) and label_c.shape == (8, 8)
    assert set(np.unique(label_c)) == {1, 255}
    assert (label_c == 1).sum() == 30  # every original pixel once, padding is ignore
    np.testing.assert_allclose(vi_c, ir_c * 0.5)
    assert set(np.round(ir_c.ravel(), 6)) <= set(np.round(ir.ravel(), 6))  # reflect padding reuses pixels


def test_random_crops_without_vertical_flips_keep_the_crops_and_horizontal_flips(coded_folders):
    """vertical_flips=False drops the upside-down crops only: the same windows and horizontal flips as the default
    (the random draws are the same), never a vertical flip."""
    both = _folders(coded_folders, mode="random_crop", patch_size=16, seed=7)
    horizontal = _folders(coded_folders, mode="random_crop", patch_size=16, seed=7, vertical_flips=False)
    flipped_h = flipped_v_default = 0
    for epoch in range(4):
        both.set_epoch(epoch)
        horizontal.set_epoch(epoch)
        for i in range(len(both)):
            (xa, ya), (xb, yb) = _decode(both[i]), _decode(horizontal[i])
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(np.sort(ya, axis=0), yb)  # same rows; upright in the new one
            assert yb[0, 0] < yb[-1, 0]
            flipped_h += int(xb[0, 0] > xb[0, -1])
            flipped_v_default += int(ya[0, 0] > ya[-1, 0])
    assert 0 < flipped_h < 12 and 0 < flipped_v_default < 12


def test_several_random_crops_per_scene_and_epoch(coded_folders):
    """crops_per_scene=k: k * n samples per epoch, sample i from scene i mod n with its own draws; the first n are
    the samples of k=1. Only in random_crop mode."""
    one = _folders(coded_folders, mode="random_crop", patch_size=16, seed=7)
    four = _folders(coded_folders, mode="random_crop", patch_size=16, seed=7, crops_per_scene=4)
    assert len(one) == 3 and len(four) == 12
    assert [four[i]["name"] for i in range(12)] == [one[i % 3]["name"] for i in range(12)]
    for i in range(3):
        np.testing.assert_array_equal(four[i]["ir"].numpy(), one[i]["ir"].numpy())
    crops = {(tuple(_decode(four[i])[0][0, :2]), tuple(_decode(four[i])[1][:2, 0])) for i in range(0, 12, 3)}
    assert len(crops) > 1  # the same scene, cut elsewhere (or flipped) in the same epoch
    with pytest.raises(ValueError, match="crops_per_scene"):
        _folders(coded_folders, mode="tiles", patch_size=16, crops_per_scene=2)
    with pytest.raises(ValueError, match="crops_per_scene"):
        _folders(coded_folders, mode="random_crop", patch_size=16, crops_per_scene=0)


def test_random_rescale_resizes_images_bilinearly_and_labels_by_nearest_neighbour():
    rng = np.random.default_rng(0)
    ir = rng.random((6, 10), dtype=np.float32)
    vi = ir[::-1].copy()
    label = rng.integers(0, 4, (6, 10)).astype(np.int64)
    label[0, 0] = 255
    out = random_rescale(ir, vi, label, (2.0, 2.0), torch.Generator().manual_seed(0))
    assert [a.shape for a in out] == [(12, 20)] * 3 and out[2].dtype == np.int64
    np.testing.assert_array_equal(out[0], cv2.resize(ir, (20, 12), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(out[1], cv2.resize(vi, (20, 12), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(out[2], np.repeat(np.repeat(label, 2, axis=0), 2, axis=1))  # classes stay classes
    small = random_rescale(ir, vi, label, (0.5, 0.5))
    assert small[0].shape == (3, 5) and set(np.unique(small[2])) <= set(np.unique(label))
    # the factor is uniform in [lo, hi], one draw per call, repeatable by generator
    sizes = {random_rescale(ir, vi, None, (0.5, 2.0), torch.Generator().manual_seed(s))[0].shape for s in range(30)}
    assert len(sizes) > 5 and all(3 <= h <= 12 and 5 <= w <= 20 for h, w in sizes)
    a = random_rescale(ir, vi, label, (0.5, 2.0), torch.Generator().manual_seed(3))
    b = random_rescale(ir, vi, label, (0.5, 2.0), torch.Generator().manual_seed(3))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    for bad in ((0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)):
        with pytest.raises(ValueError, match="scale_range"):
            random_rescale(ir, vi, label, bad)


def test_rescaled_random_crops_keep_ir_vi_label_aligned(tmp_path):
    """Scenes of 8-pixel class blocks, ir and vi coding the class: in every rescaled crop, wherever the image is
    flat (inside a block), the label is the class the images show."""
    yy, xx = np.mgrid[0:48, 0:64]
    label = ((xx // 8 + 2 * (yy // 8)) % NC).astype(np.uint8)
    for stem in ("a", "b"):
        _save(tmp_path / "ir" / f"{stem}.png", (label * 40).astype(np.uint8))
        _save(tmp_path / "vi" / f"{stem}.png", (250 - label * 40).astype(np.uint8))
        _save(tmp_path / "label" / f"{stem}.png", label)
    dataset = _folders(tmp_path, mode="random_crop", patch_size=24, seed=1, scale_range=(0.75, 2.0),
                       vertical_flips=False)
    checked = 0
    for epoch in range(6):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            sample = dataset[i]
            ir, vi, lab = sample["ir"][0].numpy() * 255, sample["vi"][0].numpy() * 255, sample["label"].numpy()
            assert ir.shape == lab.shape == (24, 24)
            np.testing.assert_allclose(ir + vi, 250, atol=1e-3)
            flat = np.ones_like(lab, dtype=bool)
            for axis in (0, 1):
                for shift in (1, -1):
                    flat &= np.roll(ir, shift, axis=axis) == ir
            flat[[0, -1], :] = flat[:, [0, -1]] = False
            np.testing.assert_array_equal(lab[flat], np.rint(ir[flat] / 40).astype(int))
            checked += int(flat.sum())
    assert checked > 1000
    with pytest.raises(ValueError, match="random_crop"):
        _folders(tmp_path, mode="tiles", patch_size=16, scale_range=(0.5, 2.0))
    with pytest.raises(ValueError, match="scale_range"):
        _folders(tmp_path, mode="random_crop", patch_size=16, scale_range=(2.0, 0.5))
    built = build_dataset({"name": "folders", "root": str(tmp_path), "ir_dir": "ir", "vi_dir": "vi",
                           "label_dir": "label", "num_classes": NC, "mode": "random_crop", "patch_size": 16,
                           "scale_range": [0.5, 1.5], "vertical_flips": False}, "train")
    assert built.scale_range == (0.5, 1.5) and built.vertical_flips is False


def test_patch_spread_definitions():
    patch = np.array([[0.2] * 5 + [0.8] * 5], np.float32)
    assert patch_spread(patch) == pytest.approx(0.75)
    assert patch_spread(patch, "range") == pytest.approx(0.6)
    assert patch_spread(np.zeros((4, 4), np.float32)) == 0.0


def test_release_patches_and_contrast_filter():
    size = 4

    def halves(low, high):
        tile = np.full((size, size), low, np.float32)
        tile[:, size // 2:] = high
        return tile

    flat = np.full((size, size), 0.5, np.float32)
    contrasty = halves(0.2, 0.8)
    enough = halves(0.89, 1.0)  # (1.0 - 0.89) / 1.0 = 0.11: kept
    too_low = halves(0.92, 1.0)  # 0.08: skipped
    dark = halves(0.01, 0.02)  # relative spread 0.5 (kept by "p90"), absolute 0.01 (skipped by "range")
    ir_tiles = [[contrasty, contrasty, flat], [enough, too_low, dark]]
    vi_tiles = [[contrasty, flat, contrasty], [contrasty, contrasty, contrasty]]
    ir = np.block(ir_tiles)
    vi = np.block(vi_tiles)
    # a remainder narrower than the patch size is dropped
    ir = np.pad(ir, ((0, 3), (0, 2)), mode="edge")
    vi = np.pad(vi, ((0, 3), (0, 2)), mode="edge")
    label = np.arange(ir.size, dtype=np.int64).reshape(ir.shape)
    # ir flat at (0, 8); vi flat at (0, 4): skipped when EITHER is low-contrast
    assert release_patch_origins(ir, vi, size) == [(0, 0), (4, 0), (4, 8)]
    assert release_patch_origins(ir, vi, size, relative_to="range") == [(0, 0), (4, 0)]
    patches = cut_release_patches(ir, vi, label, size=size)
    assert [(p.top, p.left) for p in patches] == [(0, 0), (4, 0), (4, 8)]
    np.testing.assert_array_equal(patches[2].label, label[4:8, 8:12])
    np.testing.assert_array_equal(patches[1].ir, enough)
    assert cut_release_patches(ir[:3, :3], vi[:3, :3], None, size=size) == []


def test_release_patches_mode_indexes_image_patch_pairs(coded_folders):
    dataset = _folders(coded_folders, mode="release_patches", patch_size=16)
    # 40x48 -> 2 x 3 windows of 16; the top-left window's ir has x in 0..15 -> spread fine; all kept here
    per_image = len(release_patch_origins(*[dataset.load_pair(0)[k] for k in ("ir", "vi_y")], 16))
    assert len(dataset) == 3 * per_image and per_image > 0
    sample = dataset[per_image + 1]
    assert sample["name"].startswith("b_y") and sample["ir"].shape == (1, 16, 16)
    x, y = _decode(sample)
    np.testing.assert_array_equal(sample["label"].numpy(), (x // CELL + y // CELL) % NC)


def test_layout_datasets_and_classes_yaml(tmp_path):
    ir, vi, label = _position_coded(20, 24)
    for split in ("train", "test"):
        _save(tmp_path / "FMB" / split / "Infrared" / "00001.png", ir)
        _save(tmp_path / "FMB" / split / "Visible" / "00001.png", vi)
        _save(tmp_path / "FMB" / split / "Label" / "00001.png", label)
        _save(tmp_path / "MSRS" / split / "ir" / "00001D.png", ir)
        _save(tmp_path / "MSRS" / split / "vi" / "00001D.png", vi)
        _save(tmp_path / "MSRS" / split / "Segmentation_labels" / "00001D.png", label)
    _save(tmp_path / "RS" / "cropinfrared" / "FLIR_1.jpg", ir)
    _save(tmp_path / "RS" / "crop_LR_visible" / "FLIR_1.jpg", vi)
    fmb = FMBDataset(tmp_path / "FMB", "test")
    assert fmb.class_names == list(FMB_CLASSES) and fmb.num_classes == 15
    msrs = MSRSDataset(tmp_path / "MSRS", "train", mode="random_crop", patch_size=8, seed=0)
    assert msrs.num_classes == 9 and msrs.class_names == list(MSRS_CLASSES) and msrs[0]["ir"].shape == (1, 8, 8)
    (tmp_path / "FMB" / "classes.yaml").write_text("- background\n- a\n- b\n- c\n- d\n- e\n")
    custom = FMBDataset(tmp_path / "FMB", "train")
    assert custom.class_names[0] == "background" and custom.num_classes == 6
    road = RoadSceneDataset(tmp_path / "RS")
    assert "label" not in road[0] and road.num_classes == 0 and road[0]["name"] == "FLIR_1"
    with pytest.raises(FileNotFoundError, match="folders"):
        FMBDataset(tmp_path / "MSRS", "train")


def test_build_dataset_factory(tmp_path):
    ir, vi, label = _position_coded(20, 24)
    for split in ("train", "test"):
        _save(tmp_path / split / "Infrared" / "00001.png", ir)
        _save(tmp_path / split / "Visible" / "00001.png", vi)
        _save(tmp_path / split / "Label" / "00001.png", label)
    train = build_dataset({"name": "fmb", "root": str(tmp_path), "patch_size": 8, "seed": 1}, "train")
    assert train.mode == "random_crop" and train[0]["ir"].shape == (1, 8, 8)
    test = build_dataset({"name": "fmb", "root": str(tmp_path), "patch_size": 8, "ir_dir": None}, "test")
    assert test.mode == "full" and test[0]["ir"].shape == (1, 20, 24)
    folders = build_dataset({"name": "folders", "root": str(tmp_path), "ir_dir": "{split}/Infrared",
                             "vi_dir": "{split}/Visible", "label_dir": "{split}/Label", "num_classes": NC},
                            "test", mode="full")
    assert folders.num_classes == NC and folders[0]["label"].shape == (20, 24)
    with pytest.raises(ValueError, match="unknown dataset config key"):
        build_dataset({"name": "fmb", "root": str(tmp_path), "patchsize": 8}, "train")
    with pytest.raises(ValueError, match="only apply to name 'folders'"):
        build_dataset({"name": "fmb", "root": str(tmp_path), "ir_dir": "x"}, "train")
    with pytest.raises(ValueError, match="number of classes is unknown"):
        build_dataset({"name": "folders", "ir_dir": tmp_path / "test" / "Infrared",
                       "vi_dir": tmp_path / "test" / "Visible", "label_dir": tmp_path / "test" / "Label"}, "test")


def test_return_chroma_and_dataloader_collation(shared_data):
    dataset = PairedFolderDataset(shared_data / "MSRS" / "ir", shared_data / "MSRS" / "vi", return_chroma=True)
    sample = dataset[0]
    assert sample["vi_crcb"].shape == (2, 480, 640) and bool(sample["vi_is_color"])
    assert not bool(sample["ir_is_color"]) and torch.all(sample["ir_crcb"] == 0.5)
    crops = PairedFolderDataset(shared_data / "RoadScene" / "ir", shared_data / "RoadScene" / "vi",
                                mode="random_crop", seed=0)
    batch = next(iter(torch.utils.data.DataLoader(crops, batch_size=4)))
    assert batch["ir"].shape == (4, 1, 128, 128) and len(batch["name"]) == 4
