import cv2
import numpy as np
import pytest
import yaml

from data.datasets import FMB_CLASSES, FMBDataset
from data.synthetic import (
    BUILDING,
    LAMP,
    PERSON,
    RARE_VEHICLES,
    SIGN,
    SKY,
    generate_dataset,
    label_to_color,
    main,
    render_scene,
)

SIZE = (64, 48)


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    generate_dataset(tmp_path / "a", 3, 1, SIZE, seed=5)
    generate_dataset(tmp_path / "b", 3, 1, SIZE, seed=5)
    generate_dataset(tmp_path / "c", 3, 1, SIZE, seed=6)
    a, b, c = (_tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert set(a) == set(c)
    images = [k for k in a if k.endswith(".png")]
    assert len(images) == 4 * 4
    assert all(a[k] != c[k] for k in images if "/Visible/" in k)


def test_layout_and_file_formats(tmp_path):
    meta = generate_dataset(tmp_path / "s", 2, 1, SIZE, seed=0)
    root = tmp_path / "s"
    assert yaml.safe_load((root / "classes.yaml").read_text()) == list(FMB_CLASSES)
    assert [e["name"] for e in meta["files"]["train"]] == ["00000", "00001"]
    assert [e["name"] for e in meta["files"]["test"]] == ["00002"]
    ir = cv2.imread(str(root / "train" / "Infrared" / "00000.png"), cv2.IMREAD_UNCHANGED)
    vi = cv2.imread(str(root / "train" / "Visible" / "00000.png"), cv2.IMREAD_UNCHANGED)
    label = cv2.imread(str(root / "train" / "Label" / "00000.png"), cv2.IMREAD_UNCHANGED)
    colour = cv2.imread(str(root / "train" / "color" / "00000.png"), cv2.IMREAD_UNCHANGED)
    assert ir.shape == (48, 64) and ir.dtype == np.uint8
    assert vi.shape == (48, 64, 3) and not (np.array_equal(vi[..., 0], vi[..., 1]))
    assert label.shape == (48, 64) and label.max() < 15
    np.testing.assert_array_equal(colour[..., ::-1], label_to_color(label))
    dataset = FMBDataset(root, "train")
    assert dataset.num_classes == 15 and len(dataset) == 2


def test_refuses_non_empty_folder_and_overwrite_cleans_stale_files(tmp_path):
    out = tmp_path / "s"
    generate_dataset(out, 3, 1, SIZE, seed=0)
    again = generate_dataset(out, 3, 1, SIZE, seed=0)  # identical settings: already there, nothing written
    assert again["skipped"]
    with pytest.raises(FileExistsError, match="not empty"):
        generate_dataset(out, 2, 1, SIZE, seed=1)
    assert main(["--out", str(out), "--train", "2", "--test", "1", "--size", "64", "48", "--seed", "1"]) == 2
    assert main(["--out", str(out), "--train", "2", "--test", "1", "--size", "64", "48", "--seed", "1",
                 "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "train" / "Visible").iterdir()) == ["00000.png", "00001.png"]
    assert sorted(p.name for p in (out / "test" / "Label").iterdir()) == ["00002.png"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        generate_dataset(other, 1, 0, SIZE)


def test_all_fifteen_classes_appear_across_a_small_set():
    seen = np.zeros(15, bool)
    for i in range(8):
        scene = render_scene(np.random.default_rng(100 + i), 96, 72, rare_vehicle=RARE_VEHICLES[i % 4])
        seen |= np.bincount(scene.label.ravel(), minlength=15)[:15] > 0
    missing = [FMB_CLASSES[i] for i in np.flatnonzero(~seen)]
    assert not missing, f"classes never drawn: {missing}"


def test_infrared_and_visible_disagree_where_promised():
    sign_ratios, person_margins = [], []
    for i in range(6):
        scene = render_scene(np.random.default_rng(i), 96, 72, night=False)
        ir = scene.ir / 255.0
        vis = scene.visible.astype(np.float64).mean(axis=2) / 255.0
        person = scene.label == PERSON
        if person.any():
            person_margins.append(ir[person].mean() - ir.mean())
        sign = scene.label == SIGN
        if sign.sum() > 4:
            sign_ratios.append(vis[sign].var() / max(ir[sign].var(), 1e-9))
        sky = scene.label == SKY
        building = scene.label == BUILDING
        # sky: bright in the visible image, cold (dark) in infrared
        assert vis[sky].mean() > vis[building].mean() - 0.1 and ir[sky].mean() < ir[building].mean()
    assert person_margins and min(person_margins) > 0.2  # people are warm
    assert sign_ratios and np.median(sign_ratios) > 3  # sign text lives in the visible image only


def test_night_scenes_are_darker_with_glare():
    for i in range(3):
        day = render_scene(np.random.default_rng(i), 96, 72, night=False)
        night = render_scene(np.random.default_rng(i), 96, 72, night=True)
        assert night.night and not day.night
        assert night.visible.mean() < 0.6 * day.visible.mean()
        assert night.visible.max() == 255  # lamps saturate
        # infrared keeps the warm people at night
        person = night.label == PERSON
        if person.any():
            assert night.ir[person].mean() > night.ir.mean() + 40
        assert (night.label == LAMP).any()
