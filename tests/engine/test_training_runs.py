"""train.py and the Trainer around a run: one process per run folder, no silent overwrite, nothing-to-do on a
finished run, Ctrl-C saves a resumable checkpoint, clear messages and documented exit codes for bad set-ups."""
from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.config import ConfigError, load_config
from engine.run_folder import RunFolderError, RunFolderLock
from engine.trainer import NonFiniteError, NonFiniteLossError, NonFiniteWeightsError, Trainer, TrainingInterrupted
from losses import UAAFusionLoss
from tests.helpers.factories import tiny_train_config
from tests.helpers.scripts import REPO, train_cli
from tests.helpers.toy_models import CreatesFileWhenUnpickled

RUN = ["train.epochs=2", "train.max_steps_per_epoch=2", "data.val_pairs=1"]


def _cli(root: Path, run_dir: Path, *extra: str) -> list[str]:
    sets = [f"--set=data.root={root}", "--set=fusion.stages=2", "--set=fusion.channels=8",
            "--set=attribution.ig_steps=1", "--set=data.patch_size=48", "--set=train.batch_size=4",
            *(f"--set={s}" for s in RUN)]
    return ["--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(run_dir), "--quiet", "--skip-check",
            *sets, *extra]


def test_a_second_run_on_a_busy_folder_is_refused_and_a_dead_lock_is_taken_over(tmp_path, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from engine.run_folder import RunFolderLock; "
                               f"RunFolderLock({str(tmp_path)!r}).acquire(); print('held', flush=True); "
                               "time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=rf"in use by train.py pid {holder.pid} on"):
            RunFolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the killed holder's flock is gone with it; its note in the lock file is reported and replaced
    lock = RunFolderLock(tmp_path).acquire()
    assert f"taking over the lock of train.py pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
    again = RunFolderLock(tmp_path).acquire()  # the same process may open the folder again (shared)
    again.release()
    lock.release()
    assert not (tmp_path / ".lock").read_text().strip()


def test_existing_run_is_not_overwritten_without_asking(synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli.main(_cli(synthetic_root, run)) == 0
    first = (run / "last.pt").stat().st_mtime_ns
    assert train_cli.main(_cli(synthetic_root, run)) == 2
    assert "already holds a run" in capsys.readouterr().err and (run / "last.pt").stat().st_mtime_ns == first
    assert train_cli.main(["--resume", str(run), "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out and (run / "last.pt").stat().st_mtime_ns == first
    assert train_cli.main(_cli(synthetic_root, run, "--overwrite")) == 0
    assert (run / "last.pt").stat().st_mtime_ns != first and not (run / ".lock").read_text().strip()


def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_130(synthetic_root, tmp_path, monkeypatch, capsys):
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert train_cli.main(_cli(synthetic_root, straight)) == 0
    real_step = Trainer.train_step

    def step_then_sigint(self, batch):
        out = real_step(self, batch)
        if self.global_step == 1:  # a real SIGINT during the second step, the last of epoch 1 (counted after it)
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_sigint)
    previous = signal.getsignal(signal.SIGINT)
    try:
        assert train_cli.main(_cli(synthetic_root, run)) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "saved to" in capsys.readouterr().err
    state = load_checkpoint(run / "last.pt")
    assert state["global_step"] == 2 and state["epoch"] == 1 and state["step_in_epoch"] == 0
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert train_cli.main(["--resume", str(run), "--quiet"]) == 0
    a, b = load_checkpoint(straight / "last.pt")["model"], load_checkpoint(run / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the interrupted-and-resumed run equals the straight one


def test_stop_request_mid_epoch_saves_the_exact_position(synthetic_root, tmp_path):
    cfg = tiny_train_config(synthetic_root, "train.epochs=1", "train.max_steps_per_epoch=3", "data.val_pairs=1")
    trainer = Trainer(cfg, tmp_path, show_progress=False)
    real_step = trainer.train_step

    def step(batch):
        out = real_step(batch)
        trainer.request_stop(signal.SIGTERM)
        return out

    trainer.train_step = step
    with pytest.raises(TrainingInterrupted, match="signal 15"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step_in_epoch"] == 1 and state["epoch"] == 0
    resumed = Trainer(cfg, tmp_path, resume=True, show_progress=False)
    assert resumed.step_in_epoch == 1
    resumed.fit()
    assert resumed.finished


@pytest.mark.parametrize("extra,words", [
    (["--set", "train.epochs=0"], "train.epochs' must be at least 1"),
    (["--set", "train.epochs=-3"], "train.epochs' must be at least 1"),
    (["--device", "cuda:7"], "not available"),
])
def test_bad_set_ups_exit_2_with_one_line(synthetic_root, tmp_path, capsys, extra, words):
    if "cuda:7" in extra and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    run = tmp_path / "run"
    assert train_cli.main(_cli(synthetic_root, run, *extra)) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (run / "last.pt").exists()


def test_resume_of_a_missing_or_empty_folder_names_the_problem(tmp_path, capsys):
    assert train_cli.main(["--resume", str(tmp_path / "nowhere")]) == 2
    assert "nothing to resume: run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert train_cli.main(["--resume", str(tmp_path / "empty")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


@pytest.mark.parametrize("content,words", [
    ("base: self.yaml\n", "loops back"),
    ("", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a text (YAML) file"),
    ("- just\n- a list\n", "must hold a mapping"),
    ("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", "key 'lr' is given twice (lines 2 and 4)"),
])
def test_config_file_problems_name_the_file(tmp_path, content, words):
    path = tmp_path / "self.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(words)) as info:
        load_config(path)
    assert str(path.name) in str(info.value)


def test_checkpoint_with_the_marker_but_missing_keys(synthetic_root, tmp_path, capsys):
    path = tmp_path / "weird.pt"
    save_checkpoint(path, {"something": 1})
    from tests.helpers.scripts import test_cli

    (tmp_path / "ir").mkdir()
    (tmp_path / "vi").mkdir()
    assert test_cli.main(["--checkpoint", str(path), "--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"),
                          "--out", str(tmp_path / "out")]) == 2
    assert "has no 'config' entry" in capsys.readouterr().err
    cfg = tiny_train_config(synthetic_root, *RUN)
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "last.pt", {"model": {}})
    with pytest.raises(CheckpointError, match="cannot resume a run: it lacks"):
        Trainer(cfg, run, resume=True, show_progress=False)


def test_disk_full_while_checkpointing_exits_4_and_names_the_file(synthetic_root, tmp_path, monkeypatch, capsys):
    import utils.atomic as atomic

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    run = tmp_path / "run"
    assert train_cli.main(_cli(synthetic_root, run)) == 4
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(run) in err and "Traceback" not in err
    assert not list(run.glob(".*.tmp"))


def test_code_in_a_checkpoint_is_never_run(tmp_path):
    marker = tmp_path / "created_on_load"
    path = tmp_path / "evil.pt"
    torch.save({"format": "uaafusion-checkpoint-v1", "payload": CreatesFileWhenUnpickled(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"refused[\s\S]*never loaded"):
        load_checkpoint(path)
    assert not marker.exists()



def test_checkpoints_hold_only_tensors_and_plain_values(synthetic_root, tmp_path):
    cfg = tiny_train_config(synthetic_root, "train.epochs=1", "train.max_steps_per_epoch=1", "data.val_pairs=1")
    Trainer(cfg, tmp_path, show_progress=False).fit()
    payload = torch.load(tmp_path / "last.pt", weights_only=True)  # no allow-list needed
    assert payload["rng"]["numpy"]["kind"] == "MT19937"


def test_checkpoints_and_configs_of_earlier_versions_still_load(tmp_path):
    """Earlier versions named the fusion modules after the release (blockflow.k.conv1, init_conv_ir, ...), had no
    data.flips (random crops always flipped) and repeated ignore_index in three blocks."""
    from engine.checkpoint import load_model_from_checkpoint
    from engine.config import apply_overrides
    from models.release.convert import STAGE_PARTS
    from models.uaafusion import build_model

    cfg = load_config(None, ["fusion.stages=2", "fusion.channels=8", "attribution.ig_steps=1"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=4)
    renamed = {}
    back = {ours: theirs for theirs, ours in STAGE_PARTS.items()}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[:2] == ["fusion", "stages"]:
            parts[1], parts[3] = "blockflow", back.get(parts[3], parts[3])
        elif parts[:2] in (["fusion", "init_memory_ir"], ["fusion", "init_memory_vi"]):
            parts[1] = parts[1].replace("init_memory", "init_conv")
        renamed[".".join(parts)] = value
    old_cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    old_cfg["data"] = {k: v for k, v in cfg["data"].items() if k != "flips"} | {"mode": "random_crop"}
    old_cfg["attribution"]["ignore_index"] = old_cfg["loss"]["ignore_index"] = 255
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"model": renamed, "config": old_cfg, "num_classes": 4})
    loaded, payload = load_model_from_checkpoint(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert payload["config"]["data"]["flips"] is True  # as that version trained
    assert apply_overrides({**old_cfg, "data": {**old_cfg["data"], "mode": "tiles"}})["data"]["flips"] is False


@pytest.mark.parametrize("override,key", [
    ("train.lr=inf", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("fusion.rho_init=.nan", "fusion.rho_init"),
    ("train.segmenter_lr=-.inf", "train.segmenter_lr"),
    ("loss.seg_class_weights=[1.0, .nan, 1.0]", "loss.seg_class_weights"),  # a float inside a list
])
def test_non_finite_config_values_are_config_errors(synthetic_root, tmp_path, capsys, monkeypatch, override, key):
    import engine.dataset_check

    monkeypatch.setattr(engine.dataset_check, "check_before_training", lambda cfg: pytest.fail("data checked"))
    run = tmp_path / "run"
    assert train_cli.main(_cli(synthetic_root, run, "--set", override)) == 2
    err = capsys.readouterr().err
    assert f"config key '{key}' must be a finite number" in err and "Traceback" not in err
    assert not run.exists()


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@pytest.mark.parametrize("stage", ["joint", "pre-training"])
def test_weights_that_become_non_finite_stop_the_run_without_a_checkpoint(synthetic_root, tmp_path, stage):
    """An infinite learning rate (past the config check): the first optimiser step makes the weights NaN/Inf; the
    run stops there (exit code 3 in train.py) and never writes them."""
    extra = ["train.segmenter_pretrain_epochs=1"] if stage == "pre-training" else []
    cfg = tiny_train_config(synthetic_root, *RUN, *extra)
    trainer = Trainer(cfg, tmp_path, show_progress=False)
    for optimizer in [*trainer.optimizers.values(), trainer.pretrain_optimizer]:
        _set_lr(optimizer, float("inf"))
    where = "pre-training epoch 1, step 1" if stage == "pre-training" else "step 1"
    with pytest.raises(NonFiniteWeightsError, match=f"became NaN/Inf at {where} .*no checkpoint was written"):
        trainer.fit()
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
    assert trainer.nonfinite_weight() is not None
    with pytest.raises(NonFiniteWeightsError, match="refusing to write"):
        trainer.save("last.pt")
    assert not (tmp_path / "last.pt").exists() and not list(tmp_path.glob(".*.tmp"))


class _AlwaysNaN(UAAFusionLoss):
    def forward(self, *args, **kwargs):
        terms = super().forward(*args, **kwargs)
        terms["total"] = terms["total"] * float("nan")
        return terms


def test_a_run_in_which_every_loss_is_non_finite_exits_3_without_a_checkpoint(synthetic_root, tmp_path, capsys,
                                                                             monkeypatch):
    import engine.trainer

    monkeypatch.setattr(engine.trainer, "UAAFusionLoss", _AlwaysNaN)
    run = tmp_path / "run"
    assert train_cli.main(_cli(synthetic_root, run)) == 3
    captured = capsys.readouterr()
    assert "every loss of epoch 1 was NaN/Inf (2 step(s) skipped): no optimiser step was taken" in captured.err
    assert "done" not in captured.out and not (run / "last.pt").exists() and not (run / "best.pt").exists()
    assert issubclass(NonFiniteLossError, NonFiniteError) and issubclass(NonFiniteWeightsError, NonFiniteError)


def test_structure_changing_override_on_resume_is_a_usage_error(synthetic_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli.main(_cli(synthetic_root, run, "--set", "train.epochs=1")) == 0
    before = (run / "last.pt").stat().st_mtime_ns
    for override in ("fusion.stages=3", "segmenter.arch=release", "data.num_classes=9"):
        assert train_cli.main(["--resume", str(run), "--quiet", "--set", override]) == 2
        err = capsys.readouterr().err
        assert f"--set {override}: '{override.split('=')[0]}' changes the model's structure" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (run / "last.pt").stat().st_mtime_ns == before
    # the safety net below the command line: a mismatching state dict is one line, not torch's listing
    cfg = tiny_train_config(synthetic_root, *RUN, "fusion.stages=3")
    with pytest.raises(CheckpointError, match=r"does not fit the model built from the run's config: .*missing") as info:
        Trainer(cfg, run, resume=True, show_progress=False)
    assert "\n" not in str(info.value)


def test_a_busy_folder_is_refused_before_the_dataset_check(synthetic_root, tmp_path, capsys, monkeypatch):
    import engine.dataset_check

    monkeypatch.setattr(engine.dataset_check, "check_before_training", lambda cfg: pytest.fail("data checked"))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from engine.run_folder import RunFolderLock; "
                               f"RunFolderLock({str(tmp_path)!r}).acquire(); print('held', flush=True); "
                               "time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline().strip() == "held"
        args = [a for a in _cli(synthetic_root, tmp_path) if a != "--skip-check"]
        assert train_cli.main(args) == 2
        assert f"in use by train.py pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_a_failed_dataset_check_leaves_no_run_folder(tmp_path, monkeypatch):
    import engine.dataset_check

    monkeypatch.setattr(engine.dataset_check, "check_before_training", lambda cfg: False)
    run = tmp_path / "run"
    args = [a for a in _cli(tmp_path, run) if a != "--skip-check"]
    assert train_cli.main(args) == 1
    assert not run.exists()  # the lock taken before the check does not leave a folder of a run that never started


def test_checkpoint_messages_say_what_the_file_is(tmp_path, capsys):
    import pickle

    from tests.helpers.factories import write_tiny_checkpoint
    from tests.helpers.scripts import test_cli

    marker = tmp_path / "created_on_load"
    raw = tmp_path / "raw.pt"
    with raw.open("wb") as handle:  # pickle.dump, protocol 4: torch's weights-only reader fails before the global
        pickle.dump({"format": "uaafusion-checkpoint-v1", "x": CreatesFileWhenUnpickled(str(marker))}, handle)
    text = tmp_path / "notes.pt"
    text.write_text("these are notes, not weights\n")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "last.pt").write_bytes(b"")
    cfg = load_config(None, ["fusion.stages=2", "fusion.channels=8", "attribution.ig_steps=1", "data.num_classes=9"])
    classes = tmp_path / "classes.pt"  # weights of 4 classes, no num_classes entry, a config of 9
    state = torch.load(write_tiny_checkpoint(tmp_path / "tiny.pt", num_classes=4), weights_only=True)["model"]
    save_checkpoint(classes, {"model": state, "config": cfg})
    (tmp_path / "ir").mkdir()
    (tmp_path / "vi").mkdir()
    expected = {
        raw: "was refused: loading it would run code",
        text: "is not a UAAFusion checkpoint: neither a zip archive written by torch.save nor a pickle",
        folder: "is a folder, not a checkpoint file (it holds last.pt: give one of them)",
        classes: "does not fit the model built from the config: the checkpoint has 4 classes, the config/model 9",
    }
    for path, words in expected.items():
        out = tmp_path / f"out_{path.stem}"
        assert test_cli.main(["--checkpoint", str(path), "--ir", str(tmp_path / "ir"), "--vi", str(tmp_path / "vi"),
                              "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert words in err and str(path) in err, err
        assert len(err.strip().splitlines()) == 1 and "weights_only" not in err and "Traceback" not in err
        assert not out.exists()
    assert not marker.exists()
