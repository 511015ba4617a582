"""End to end on the built-in synthetic dataset: training learns, resume replays exactly, test.py fuses real
pairs of any size, bad input is reported by name, configs are strict, DDP runs on CPU with gloo."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.checkpoint import CheckpointError, load_checkpoint
from engine.config import ConfigError, load_config
from engine.trainer import Trainer
from metrics.segmentation import class_scores, confusion_matrix
from tests.helpers.factories import TINY_TRAIN as TINY
from tests.helpers.factories import tiny_train_config as tiny_config
from tests.helpers.scripts import test_cli, train_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def trained_run(synthetic_root, tmp_path_factory) -> tuple[Path, list[dict]]:
    run_dir = tmp_path_factory.mktemp("run")
    cfg = tiny_config(synthetic_root, "train.epochs=4", "train.max_steps_per_epoch=8")
    history = Trainer(cfg, run_dir, show_progress=False).fit()
    return run_dir, history


def majority_class_miou(root: Path, num_classes: int = 15) -> float:
    """mIoU of predicting the most frequent training class everywhere (the chance bar)."""
    labels = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((root / "test" / "Label").glob("*.png"))]
    train = np.concatenate([cv2.imread(str(p), cv2.IMREAD_UNCHANGED).ravel()
                            for p in sorted((root / "train" / "Label").glob("*.png"))])
    majority = np.bincount(train, minlength=num_classes).argmax()
    cm = sum(confusion_matrix(np.full_like(lab, majority), lab, num_classes) for lab in labels)
    _, iou = class_scores(cm)
    return float(np.nanmean(iou))


def test_training_lowers_loss_and_beats_chance(trained_run, synthetic_root):
    run_dir, history = trained_run
    assert history[-1]["loss_total"] < history[0]["loss_total"]
    assert history[-1]["val_miou"] > majority_class_miou(synthetic_root)
    assert history[-1]["val_miou"] > history[0]["val_miou"]
    for name in ("last.pt", "best.pt", "config.yaml"):
        assert (run_dir / name).is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*")), "tensorboard logs missing"
    payload = load_checkpoint(run_dir / "last.pt")
    assert {"model", "optimizers", "schedulers", "epoch", "global_step", "config", "seed", "rng"} <= set(payload)
    assert payload["epoch"] == 4 and payload["global_step"] == 32


def test_resume_equals_uninterrupted(synthetic_root, tmp_path):
    extra = ("train.max_steps_per_epoch=3", "data.val_pairs=1")
    straight = Trainer(tiny_config(synthetic_root, "train.epochs=2", *extra), tmp_path / "a", show_progress=False)
    straight.fit()
    first = Trainer(tiny_config(synthetic_root, "train.epochs=1", *extra), tmp_path / "b", show_progress=False)
    first.fit()
    resumed = Trainer(tiny_config(synthetic_root, "train.epochs=2", *extra), tmp_path / "b", resume=True,
                      show_progress=False)
    assert resumed.epoch == 1
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    opt_a = straight.optimizers["joint"].state_dict()["state"]
    opt_b = resumed.optimizers["joint"].state_dict()["state"]
    assert all(torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a)


def _pick_pairs(shared: Path, dst: Path) -> dict[str, tuple[int, int, bool]]:
    """Copy a few real pairs (MSRS colour, odd-size RoadScene, TNO 3-channel gray) into dst/{ir,vi}."""
    picks = {"MSRS": 1, "RoadScene": 2, "TNO": 1}
    expected = {}
    for folder, count in picks.items():
        names = sorted(p.name for p in (shared / folder / "vi").glob("*.png"))
        if folder == "RoadScene":  # the odd-sized ones
            names = [n for n in names if any(s % 2 for s in cv2.imread(str(shared / folder / "vi" / n)).shape[:2])]
        for name in names[:count]:
            for mod in ("ir", "vi"):
                (dst / mod).mkdir(parents=True, exist_ok=True)
                (dst / mod / f"{folder}_{name}").write_bytes((shared / folder / mod / name).read_bytes())
            vi = cv2.imread(str(shared / folder / "vi" / name), cv2.IMREAD_UNCHANGED)
            colour = vi.ndim == 3 and not (np.array_equal(vi[..., 0], vi[..., 1])
                                           and np.array_equal(vi[..., 1], vi[..., 2]))
            expected[Path(f"{folder}_{name}").stem] = (vi.shape[0], vi.shape[1], colour)
    return expected


def test_test_py_fuses_real_pairs_of_any_size(trained_run, shared_data, tmp_path, capsys):
    run_dir, _ = trained_run
    expected = _pick_pairs(shared_data, tmp_path / "in")
    out = tmp_path / "out"
    code = test_cli.main(["--checkpoint", str(run_dir / "best.pt"), "--ir", str(tmp_path / "in" / "ir"),
                          "--vi", str(tmp_path / "in" / "vi"), "--out", str(out), "--save-npy", "--save-maps",
                          "--quiet"])
    assert code == 0, capsys.readouterr().err
    for name, (h, w, colour) in expected.items():
        image = cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape[:2] == (h, w)
        assert (image.ndim == 3) == colour, f"{name}: colour visible should give RGB output, gray gives gray"
        raw = np.load(out / "npy" / f"{name}.npy")
        assert raw.shape == (h, w) and raw.dtype == np.float32
        for key in ("w_ir", "w_vi", "att1", "att2"):
            assert (out / "maps" / f"{name}_{key}.npy").is_file() and (out / "maps" / f"{name}_{key}.png").is_file()
        w_ir = np.load(out / "maps" / f"{name}_w_ir.npy")
        w_vi = np.load(out / "maps" / f"{name}_w_vi.npy")
        np.testing.assert_allclose(w_ir + w_vi, 1.0, atol=1e-6)
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_test_py_reports_bad_inputs_and_goes_on(trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    ir, vi = tmp_path / "ir", tmp_path / "vi"
    ir.mkdir()
    vi.mkdir()
    rng = np.random.default_rng(0)
    good = rng.integers(0, 255, (40, 36), dtype=np.uint8)
    for d in (ir, vi):
        cv2.imwrite(str(d / "good.png"), good)
    cv2.imwrite(str(ir / "lonely.png"), good)  # no visible partner
    cv2.imwrite(str(ir / "sizes.png"), good)
    cv2.imwrite(str(vi / "sizes.png"), rng.integers(0, 255, (30, 36), dtype=np.uint8))  # size mismatch
    (ir / "empty.png").write_bytes(b"")  # zero-byte
    cv2.imwrite(str(vi / "empty.png"), good)
    (ir / "text.png").write_text("not an image")
    cv2.imwrite(str(vi / "text.png"), good)
    before = {p: p.read_bytes() for p in list(ir.iterdir()) + list(vi.iterdir())}
    out = tmp_path / "out"
    code = test_cli.main(["--checkpoint", str(run_dir / "best.pt"), "--ir", str(ir), "--vi", str(vi),
                          "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    for name in ("lonely", "sizes", "empty", "text"):
        assert name in err
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]
    assert all(p.read_bytes() == data for p, data in before.items()), "inputs were modified"


def test_test_py_setup_errors_exit_2(tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 truncated")
    code = test_cli.main(["--checkpoint", str(broken), "--ir", str(tmp_path), "--vi", str(tmp_path),
                          "--out", str(tmp_path / "o")])
    assert code == 2 and "broken.pt" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_config_rejects_unknown_and_mistyped_keys(tmp_path):
    with pytest.raises(ConfigError, match="train.epoch'"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="fusion.stages"):
        load_config(None, ["fusion.stages=five"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  lambda_grd: 2\n")
    with pytest.raises(ConfigError, match="loss.lambda_grd"):
        load_config(bad)
    cfg = load_config(REPO / "configs" / "msrs.yaml", ["train.lr=1e-3"])
    assert cfg["data"]["name"] == "msrs" and cfg["train"]["lr"] == pytest.approx(1e-3)
    assert cfg["fusion"]["stages"] == 5 and cfg["attribution"]["ig_steps"] == 5


def test_joint_training_samples_with_the_configured_scale_jitter_and_flips(synthetic_root, tmp_path):
    """data.scale_range and data.vertical_flips reach the training set (the pre-training's augmentation, D18);
    scale_range outside random_crop mode or out of order is a config error."""
    cfg = tiny_config(synthetic_root, "data.mode=random_crop", "data.flips=true", "data.scale_range=[0.5, 1.5]",
                      "data.vertical_flips=false", "data.crops_per_scene=3")
    train_set = Trainer(cfg, tmp_path / "r", show_progress=False).train_set
    assert train_set.scale_range == (0.5, 1.5) and train_set.vertical_flips is False and train_set.flips is True
    assert len(train_set) == 3 * len(train_set.pairs)
    with pytest.raises(ConfigError, match="crops_per_scene"):
        tiny_config(synthetic_root, "data.mode=tiles", "data.crops_per_scene=2")
    sample = train_set[0]
    assert sample["ir"].shape[-2:] == (48, 48) and sample["label"].shape == (48, 48)
    assert tiny_config(synthetic_root)["data"]["scale_range"] is None
    with pytest.raises(ConfigError, match="needs data.mode random_crop"):
        tiny_config(synthetic_root, "data.mode=tiles", "data.scale_range=[0.5, 2]")
    for bad in ("[2, 0.5]", "[0.5]", "[0, 1]", "0.5"):
        with pytest.raises(ConfigError, match="data.scale_range"):
            tiny_config(synthetic_root, "data.mode=random_crop", f"data.scale_range={bad}")


def test_train_cli_saves_resolved_config_and_rejects_bad_key(synthetic_root, tmp_path, capsys):
    code = train_cli.main(["--config", str(REPO / "configs" / "demo.yaml"), "--set", "train.bogus=1",
                           "--run-dir", str(tmp_path / "r")])
    assert code == 2 and "train.bogus" in capsys.readouterr().err
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(tmp_path / "r"), "--quiet"]
    args += [f"--set={s}" for s in [f"data.root={synthetic_root}", *TINY, "train.epochs=1",
                                      "train.max_steps_per_epoch=1", "data.val_pairs=1"]]
    assert train_cli.main(args) == 0
    saved = load_config(tmp_path / "r" / "config.yaml")
    assert saved["fusion"]["stages"] == 2 and saved["data"]["root"] == str(synthetic_root)


@pytest.mark.slow
def test_ddp_on_cpu_with_gloo(synthetic_root, tmp_path):
    run_dir = tmp_path / "ddp"
    sets = [f"data.root={synthetic_root}", *TINY, "train.epochs=1", "train.max_steps_per_epoch=2",
            "data.val_pairs=1", "train.batch_size=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           str(REPO / "train.py"), "--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(run_dir),
           "--quiet", "--skip-check"] + [f"--set={s}" for s in sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = load_checkpoint(run_dir / "last.pt")
    assert payload["global_step"] == 2
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))


def test_batching_does_not_change_results_and_tiling_runs(trained_run, synthetic_root, tmp_path):
    run_dir, _ = trained_run
    ir, vi = synthetic_root / "test" / "Infrared", synthetic_root / "test" / "Visible"
    base = ["--checkpoint", str(run_dir / "best.pt"), "--ir", str(ir), "--vi", str(vi), "--save-npy", "--quiet"]
    # float64: in float32 oneDNN picks other kernels for a batch of 3, and on this untrained segmenter that
    # round-off can flip a near-tied region (measured up to 2.2e-4 on a few pixels); in float64 it cannot
    exact = ["--precision", "float64"]
    assert test_cli.main(base + exact + ["--out", str(tmp_path / "one")]) == 0
    assert test_cli.main(base + exact + ["--out", str(tmp_path / "three"), "--batch", "3"]) == 0
    # the smallest tile allowed (twice the 32-pixel overlap); larger images are tiled in test_fusing
    assert test_cli.main(base + ["--out", str(tmp_path / "tiled"), "--tile", "64"]) == 0
    for npy in sorted((tmp_path / "one" / "npy").glob("*.npy")):
        single = np.load(npy)
        np.testing.assert_allclose(np.load(tmp_path / "three" / "npy" / npy.name), single, atol=1e-6)
        tiled = np.load(tmp_path / "tiled" / "npy" / npy.name)
        assert tiled.shape == single.shape and np.isfinite(tiled).all()
