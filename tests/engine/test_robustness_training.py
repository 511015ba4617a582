"""Training never loses work: SIGKILL at a random step then resume equals an uninterrupted run, damaged
checkpoints fall back to the previous good one, NaN losses are caught, bad datasets are reported before
training, and a failing DDP rank leaves no half-written checkpoint."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import torch

from engine.checkpoint import CheckpointError, load_checkpoint
from engine.trainer import NonFiniteLossError, Trainer
from tests.helpers.factories import TINY_TRAIN as TINY
from tests.helpers.factories import tiny_train_config as tiny_config
from tests.helpers.scripts import train_cli

REPO = Path(__file__).resolve().parents[2]
RUN = ["train.epochs=2", "train.max_steps_per_epoch=3", "data.val_pairs=1", "train.checkpoint_every_steps=1"]


def _train_cmd(root: Path, run_dir: Path, resume: bool = False) -> list[str]:
    cmd = [sys.executable, str(REPO / "train.py"), "--quiet", "--skip-check"]
    if resume:
        return cmd + ["--resume", str(run_dir)]
    sets = [f"data.root={root}", *TINY, *RUN]
    return cmd + ["--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(run_dir)] + \
        [f"--set={s}" for s in sets]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}


def test_sigkill_at_a_random_step_then_resume_equals_uninterrupted(synthetic_root, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_cmd(synthetic_root, straight), cwd=REPO, env=_env(), check=True, capture_output=True)
    kill_after = random.Random(1234).randint(1, 4)  # number of checkpoint writes to wait for (fixed for CI)
    proc = subprocess.Popen(_train_cmd(synthetic_root, killed), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen, last_mtime, deadline = 0, None, time.time() + 300
    while seen < kill_after and proc.poll() is None and time.time() < deadline:
        target = killed / "last.pt"
        if target.exists() and target.stat().st_mtime_ns != last_mtime:
            last_mtime = target.stat().st_mtime_ns
            seen += 1
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; lengthen the run"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = load_checkpoint(killed / "last.pt")
    assert interrupted["global_step"] < 6
    subprocess.run(_train_cmd(synthetic_root, killed, resume=True), cwd=REPO, env=_env(), check=True,
                   capture_output=True)
    a = load_checkpoint(straight / "last.pt")["model"]
    b = load_checkpoint(killed / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), f"weights differ after a kill at write {kill_after}"
    assert not list(killed.glob(".*.tmp"))


def test_damaged_last_checkpoint_falls_back_to_previous(synthetic_root, tmp_path, caplog):
    cfg = tiny_config(synthetic_root, "train.epochs=2", "train.max_steps_per_epoch=1", "data.val_pairs=1")
    Trainer(cfg, tmp_path, show_progress=False).fit()
    assert (tmp_path / "last.prev.pt").exists()
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(tmp_path / "last.pt")
    resumed = Trainer(cfg, tmp_path, resume=True, show_progress=False)
    assert resumed.epoch == 1 and "previous checkpoint" in caplog.text
    (tmp_path / "last.prev.pt").unlink()
    with pytest.raises(CheckpointError, match="last.pt"):
        Trainer(cfg, tmp_path, resume=True, show_progress=False)


class _NaNOnSecondCall:
    def __init__(self, criterion):
        self.criterion, self.calls = criterion, 0
        self.settings = criterion.settings

    def __call__(self, *args, **kwargs):
        self.calls += 1
        terms = self.criterion(*args, **kwargs)
        if self.calls == 2:
            terms["total"] = terms["total"] * float("nan")
        return terms


def test_nan_loss_is_skipped_or_stops_with_a_checkpoint(synthetic_root, tmp_path):
    cfg = tiny_config(synthetic_root, "train.epochs=1", "train.max_steps_per_epoch=3", "data.val_pairs=1")
    trainer = Trainer(cfg, tmp_path / "skip", show_progress=False)
    trainer.criterion = _NaNOnSecondCall(trainer.criterion)
    trainer.fit()
    assert trainer.nonfinite_steps == 1 and trainer.global_step == 3
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())

    cfg["train"]["on_nonfinite_loss"] = "stop"
    trainer = Trainer(cfg, tmp_path / "stop", show_progress=False)
    trainer.criterion = _NaNOnSecondCall(trainer.criterion)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 2"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "stop" / "last.pt")["global_step"] == 1


def test_bad_dataset_is_reported_before_training(synthetic_root, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "test"):
        for sub in ("Infrared", "Visible", "Label"):
            (bad / split / sub).mkdir(parents=True)
            for f in sorted((synthetic_root / split / sub).glob("*.png"))[:4]:
                (bad / split / sub / f.name).write_bytes(f.read_bytes())
    (bad / "classes.yaml").write_bytes((synthetic_root / "classes.yaml").read_bytes())
    for path in bad.glob("*/Label/*.png"):  # no bicycle anywhere: a class that never appears
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        label[label == 13] = 0
        cv2.imwrite(str(path), label)
    victim = sorted((bad / "train" / "Label").glob("*.png"))[0]
    label = cv2.imread(str(victim), cv2.IMREAD_UNCHANGED)
    label[0, 0] = 77  # not a class, not the ignore value
    cv2.imwrite(str(victim), label)
    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(tmp_path / "r"),
            f"--set=data.root={bad}", "--quiet"]
    assert train_cli.main(args) == 1
    err = capsys.readouterr().err
    assert victim.name in err and "77" in err
    assert "never appear" in err and "bicycle" in err
    assert not (tmp_path / "r" / "last.pt").exists()


@pytest.mark.slow
def test_ddp_rank_failure_leaves_no_half_written_checkpoint(synthetic_root, tmp_path):
    run_dir = tmp_path / "ddp"
    sets = [f"data.root={synthetic_root}", *TINY, "train.epochs=2", "train.max_steps_per_epoch=3",
            "data.val_pairs=1", "train.batch_size=2", "train.checkpoint_every_steps=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
           str(REPO / "tests" / "helpers" / "ddp_fault.py"), "--config", str(REPO / "configs" / "demo.yaml"),
           "--run-dir", str(run_dir), "--quiet", "--skip-check"] + [f"--set={s}" for s in sets]
    env = {**_env(), "OMP_NUM_THREADS": "1", "UAAF_FAIL_RANK": "1", "UAAF_FAIL_STEP": "4"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "injected failure" in proc.stderr
    assert not list(run_dir.glob(".*.tmp")), "temporary checkpoint files left behind"
    for name in ("last.pt", "last.prev.pt", "best.pt"):
        if (run_dir / name).exists():
            load_checkpoint(run_dir / name)  # every checkpoint present is complete

