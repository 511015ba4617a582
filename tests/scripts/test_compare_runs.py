"""scripts.compare_runs: per-step losses of several runs from their TensorBoard logs, and their differences."""
from __future__ import annotations

import json

import pytest

from scripts import compare_runs


def _run(folder, values, tag="loss/total", start=1):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder / "tb"))
    for step, value in enumerate(values, start=start):
        writer.add_scalar(tag, value, step)
    writer.close()
    return folder


def test_differences_against_the_first_run(tmp_path, capsys):
    a = _run(tmp_path / "eager", [1.0, 0.5, 0.25])
    b = _run(tmp_path / "compiled", [1.0, 0.5 + 1e-3, 0.25 - 5e-3, 0.1])  # step 4 only here: left out
    assert compare_runs.main([str(a), str(b), "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| step | eager | compiled |" and out[3].startswith("| 2 | 0.500000 | 0.501000")
    record = json.loads(out[-1])
    assert record["steps"] == 3 and "1 step(s) not logged by every run left out" in out[-2]
    diff = record["differences"]["compiled"]
    assert diff["max_abs_diff"] == pytest.approx(5e-3, rel=1e-5)
    assert diff["max_rel_diff"] == pytest.approx(5e-3 / 0.25, rel=1e-5)


def test_a_folder_without_logs_or_tag_is_named(tmp_path, capsys):
    a = _run(tmp_path / "a", [1.0])
    (tmp_path / "empty").mkdir()
    assert compare_runs.main([str(a), str(tmp_path / "empty")]) == 2
    assert "empty: no TensorBoard event file" in capsys.readouterr().err
    assert compare_runs.main([str(a), str(a), "--tag", "loss/grad"]) == 2
    assert "no scalar 'loss/grad' logged" in capsys.readouterr().err
