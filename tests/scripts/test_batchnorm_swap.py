"""scripts.batchnorm_swap: the four segmenters it scores hold exactly the weights and statistics they name."""
import json

import pytest
import torch

from engine.checkpoint import load_checkpoint, save_checkpoint
from models.segmenter import build_segmenter
from scripts import batchnorm_swap


def _states():
    torch.manual_seed(0)
    pretrained = build_segmenter(15).state_dict()
    joint = {k: v + 1 if v.is_floating_point() else v + 7 for k, v in pretrained.items()}
    return pretrained, joint


def test_each_mixture_takes_the_running_statistics_of_one_and_everything_else_of_the_other():
    pretrained, joint = _states()
    states = batchnorm_swap.mixed_states(pretrained, joint)
    statistics = [k for k in joint if batchnorm_swap.is_statistic(k)]
    assert statistics and any(k.endswith("running_var") for k in statistics)
    assert not batchnorm_swap.is_statistic("encoder.bn1.weight")
    mixed = states["joint weights + pretrained statistics"]
    reverse = states["pretrained weights + joint statistics"]
    for key in joint:
        source, other = (pretrained, joint) if key in statistics else (joint, pretrained)
        assert torch.equal(mixed[key], source[key]) and torch.equal(reverse[key], other[key])
    assert all(torch.equal(states["joint"][k], joint[k]) for k in joint)


def test_different_networks_are_refused():
    pretrained, joint = _states()
    del joint[next(iter(joint))]
    with pytest.raises(ValueError, match="not the same network"):
        batchnorm_swap.mixed_states(pretrained, joint)


def test_the_cli_scores_four_segmenters(synthetic_root, tmp_path, capsys):
    pretrained, joint = _states()
    save_checkpoint(tmp_path / "seg.pt", {"segmenter": pretrained, "num_classes": 15})
    save_checkpoint(tmp_path / "model.pt", {"model": {f"segmenter.{k}": v for k, v in joint.items()},
                                            "config": {"segmenter": {"encoder": "mobilenet_v2"}}, "num_classes": 15})
    args = ["--model", str(tmp_path / "model.pt"), "--segmenter", str(tmp_path / "seg.pt"), "--val-name", "fmb",
            "--val-root", str(synthetic_root), "--threads", "1", "--save", str(tmp_path / "mixed.pt")]
    assert batchnorm_swap.main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[:-1]]
    assert [line["segmenter"] for line in lines] == list(batchnorm_swap.mixed_states(pretrained, joint))
    assert all(len(line["avg"]["iou"]) == 15 for line in lines)
    saved = load_checkpoint(tmp_path / "mixed.pt")["model"]
    mixed = batchnorm_swap.mixed_states(pretrained, joint)["joint weights + pretrained statistics"]
    assert set(saved) == {f"segmenter.{k}" for k in joint}
    assert all(torch.equal(saved[f"segmenter.{k}"], v) for k, v in mixed.items())
    assert batchnorm_swap.main(["--model", str(tmp_path / "missing.pt"), "--segmenter", str(tmp_path / "seg.pt")]) == 2
