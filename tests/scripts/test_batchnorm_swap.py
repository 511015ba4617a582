"""scripts.batchnorm_swap: the four segmenters it scores hold exactly the weights and statistics they name."""
import copy
import json

import pytest
import torch

from engine.checkpoint import load_checkpoint, save_checkpoint
from models.segmenter import build_segmenter, pad_to_multiple
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
    mixed = states[batchnorm_swap.MIXED]
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
    mixed = batchnorm_swap.mixed_states(pretrained, joint)[batchnorm_swap.MIXED]
    assert set(saved) == {f"segmenter.{k}" for k in joint}
    assert all(torch.equal(saved[f"segmenter.{k}"], v) for k, v in mixed.items())
    assert batchnorm_swap.main(["--model", str(tmp_path / "missing.pt"), "--segmenter", str(tmp_path / "seg.pt")]) == 2


def _single_batch_statistics(segmenter, batch):
    """Running statistics after one pass with momentum 1 (BatchNorm in training mode, dropout off): the batch's own."""
    probe = copy.deepcopy(segmenter).eval()
    for module in probe.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = 1.0
            module.train()
    with torch.no_grad():
        probe(batch)
    return {k: v for k, v in probe.state_dict().items() if batchnorm_swap.is_statistic(k)}


def test_recalibrated_statistics_are_the_mean_of_each_scenes_batch_statistics_and_the_weights_stay():
    torch.manual_seed(0)
    segmenter = build_segmenter(15).double().eval()
    before = copy.deepcopy(segmenter.state_dict())
    scenes = [{"ir": torch.rand(1, 48, 64, dtype=torch.float64), "vi": torch.rand(1, 48, 64, dtype=torch.float64)}
              for _ in range(2)]
    per_scene = []
    for scene in scenes:  # the three images of a scene, padded to the stride (48 -> 64) as the script pads them
        images = torch.stack([scene["ir"], scene["vi"], (scene["ir"] + scene["vi"]) / 2])
        per_scene.append(_single_batch_statistics(segmenter, pad_to_multiple(images, 16)[0]))
    state = batchnorm_swap.recalibrated_state(segmenter, scenes + [{"ir": None}], limit=2, progress=False)
    assert not segmenter.training and not any(m.training for m in segmenter.modules())  # left as it came in
    assert any(isinstance(m, torch.nn.Dropout) for m in segmenter.modules())  # the decoder's dropout: kept off
    assert {m.momentum for m in segmenter.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}  # restored
    statistics = [k for k in state if batchnorm_swap.is_statistic(k) and not k.endswith("num_batches_tracked")]
    assert len(statistics) > 20
    for key in statistics:  # in training mode no layer's output depends on running statistics: a plain mean
        expected = (per_scene[0][key] + per_scene[1][key]) / 2
        torch.testing.assert_close(state[key], expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(state[statistics[0]], before[statistics[0]])
    for key, value in before.items():
        if not batchnorm_swap.is_statistic(key):
            assert torch.equal(state[key], value)
    with pytest.raises(ValueError, match="at least one"):
        batchnorm_swap.recalibrated_state(segmenter, [], progress=False)


def test_the_cli_recalibrates_on_the_models_training_set_and_saves_those_statistics(synthetic_root, tmp_path, capsys):
    pretrained, joint = _states()
    save_checkpoint(tmp_path / "seg.pt", {"segmenter": pretrained, "num_classes": 15})
    config = {"segmenter": {"encoder": "mobilenet_v2"}, "data": {"name": "fmb", "root": str(synthetic_root)}}
    save_checkpoint(tmp_path / "model.pt", {"model": {f"segmenter.{k}": v for k, v in joint.items()},
                                            "config": config, "num_classes": 15})
    common = ["--model", str(tmp_path / "model.pt"), "--segmenter", str(tmp_path / "seg.pt"), "--val-name", "fmb",
              "--val-root", str(synthetic_root), "--threads", "1"]
    with pytest.raises(SystemExit):
        batchnorm_swap.parse_args(common + ["--save", str(tmp_path / "x.pt"), "--save-statistics", "recalibrated"])
    with pytest.raises(SystemExit):  # nothing to compare with
        batchnorm_swap.parse_args(["--model", str(tmp_path / "model.pt")])
    with pytest.raises(SystemExit):  # pre-trained statistics without the pre-trained file
        batchnorm_swap.parse_args(["--model", str(tmp_path / "model.pt"), "--recalibrate", "--save", "x.pt"])
    assert batchnorm_swap.main(["--model", str(tmp_path / "model.pt"), "--recalibrate", "--recalibrate-limit", "1",
                                "--val-name", "fmb", "--val-root", str(synthetic_root), "--threads", "1"]) == 0
    only = [json.loads(line)["segmenter"] for line in capsys.readouterr().out.strip().splitlines()]
    assert only == ["joint", batchnorm_swap.RECALIBRATED]
    args = common + ["--recalibrate", "--recalibrate-limit", "2", "--save", str(tmp_path / "recal.pt"),
                     "--save-statistics", "recalibrated"]
    assert batchnorm_swap.main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[:-1]]
    assert [line["segmenter"] for line in lines][-1] == batchnorm_swap.RECALIBRATED and len(lines) == 5
    saved = load_checkpoint(tmp_path / "recal.pt")
    assert saved["segmenter_statistics_from"] == "training images"
    segmenter = build_segmenter(15)
    segmenter.load_state_dict(joint)
    from data.datasets import build_dataset
    train = build_dataset({"name": "fmb", "root": str(synthetic_root), "mode": "full"}, "train")
    expected = batchnorm_swap.recalibrated_state(segmenter, train, limit=2, progress=False)
    for key, value in expected.items():
        torch.testing.assert_close(saved["model"][f"segmenter.{key}"], value)
        if not batchnorm_swap.is_statistic(key):
            assert torch.equal(value, joint[key])
    config["data"]["root"] = str(tmp_path / "absent")
    save_checkpoint(tmp_path / "model.pt", {"model": {f"segmenter.{k}": v for k, v in joint.items()},
                                            "config": config, "num_classes": 15})
    assert batchnorm_swap.main(common + ["--recalibrate"]) == 2
    assert "training set" in capsys.readouterr().err
