"""scripts.calibrate_segmenter: logit adjustment folded into the segmenter's last bias, τ chosen on training scenes."""
import numpy as np
import pytest
import torch

from engine.checkpoint import load_checkpoint, save_checkpoint
from losses.class_weights import log_frequency_weights
from models.segmenter import build_segmenter, segment
from scripts import calibrate_segmenter as cal


def test_the_folded_offsets_shift_every_score_of_a_class_by_minus_tau_ln_w():
    torch.manual_seed(0)
    segmenter = build_segmenter(5).double().eval()
    weights = torch.tensor([1.5, 20.0, 33.0, 0.5, 4.0])
    key = cal.classifier_bias_key(segmenter)
    assert key == "segmentation_head.0.bias"
    image = torch.rand(1, 1, 40, 36, dtype=torch.float64)
    with torch.no_grad():
        before = segment(segmenter, image)
        segmenter.load_state_dict(cal.adjusted_state(segmenter.state_dict(), key, cal.logit_offsets(weights, 0.7)))
        after = segment(segmenter, image)
    expected = -0.7 * torch.log(weights.double())
    torch.testing.assert_close(after - before, expected[None, :, None, None].expand_as(before), rtol=0, atol=1e-10)
    assert torch.equal(cal.logit_offsets(weights, 0.0), torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        cal.logit_offsets(torch.tensor([1.0, 0.0]), 1.0)
    with pytest.raises(ValueError, match="classes"):
        cal.adjusted_state(segmenter.state_dict(), key, torch.zeros(3, dtype=torch.float64))


def test_a_network_without_a_biased_last_convolution_is_refused():
    with pytest.raises(ValueError, match="bias"):
        cal.classifier_bias_key(torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1)))
    segmenter = build_segmenter(3)
    segmenter.segmentation_head[0] = torch.nn.Conv2d(segmenter.segmentation_head[0].in_channels, 3, 1, bias=False)
    with pytest.raises(ValueError, match="bias"):
        cal.classifier_bias_key(segmenter)


def test_scores_of_a_weighted_loss_optimum_are_recovered_at_tau_one():
    """Scores ln p + ln w (the weighted cross-entropy's optimum) with labels argmax p: τ = 1 gives every pixel its
    label, a wrong sign or scale of the offsets would not."""
    rng = np.random.default_rng(0)
    weights = np.array([1.4, 30.0, 8.0, 45.0])
    scored = []
    for _ in range(3):
        p = rng.dirichlet(np.ones(4), size=(12, 10)).transpose(2, 0, 1)  # (C, H, W)
        label = p.argmax(axis=0)
        label[0, 0] = 255  # ignored
        scored.append((np.log(p) + np.log(weights)[:, None, None], label))
    taus = [0.0, 0.5, 1.0, 1.5]
    curve = {t: cal.miou_present(m) for t, m in cal.confusions_by_tau(scored, np.log(weights), taus, 4).items()}
    assert curve[1.0] == 1.0 and all(curve[t] < 1.0 for t in (0.0, 0.5, 1.5))
    assert cal.best_tau(curve) == 1.0
    assert cal.best_tau({0.0: 0.5, 0.25: 0.7, 0.5: 0.7}) == 0.25  # the smallest of equal ones


def _model_file(path, root, num_classes=15, seg_class_weights="log", score_activation="none"):
    torch.manual_seed(0)
    state = build_segmenter(num_classes).state_dict()
    config = {"segmenter": {"encoder": "mobilenet_v2"}, "data": {"name": "fmb", "root": str(root)},
              "loss": {"seg_class_weights": seg_class_weights},
              "attribution": {"score_activation": score_activation}}
    save_checkpoint(path, {"model": {f"segmenter.{k}": v for k, v in state.items()}, "config": config,
                           "num_classes": num_classes, "seed": 3})
    return state


def test_the_cli_writes_the_model_with_the_chosen_offsets_and_a_record(synthetic_root, tmp_path, capsys):
    state = _model_file(tmp_path / "model.pt", synthetic_root)
    out = tmp_path / "calibrated.pt"
    args = ["--model", str(tmp_path / "model.pt"), "--save", str(out), "--grid", "0", "0.5", "1", "--scenes", "2",
            "--threads", "1", "--quiet"]
    assert cal.main(args) == 0
    assert "<- chosen" in capsys.readouterr().out
    saved = load_checkpoint(out)
    record = saved["calibration"]
    assert set(record["curve"]) == {0.0, 0.5, 1.0} and record["tau"] == cal.best_tau(record["curve"])
    assert saved["seed"] == 3 and saved["config"]["loss"]["seg_class_weights"] == "log"

    from data.datasets import build_dataset
    scan = build_dataset({"name": "fmb", "root": str(synthetic_root), "mode": "full"}, "train").label_scan
    counts = scan.class_pixels.astype(np.float64)
    weights = log_frequency_weights(counts / counts.sum())
    np.testing.assert_allclose(record["weights"], weights.numpy(), rtol=1e-5)
    expected = state["segmentation_head.0.bias"].double() - record["tau"] * torch.log(weights.double())
    torch.testing.assert_close(saved["model"]["segmenter.segmentation_head.0.bias"].double(), expected,
                               rtol=0, atol=1e-6)
    changed = [k for k in state if not torch.equal(saved["model"][f"segmenter.{k}"], state[k])]
    assert changed == (["segmentation_head.0.bias"] if record["tau"] > 0 else [])

    args = ["--model", str(tmp_path / "model.pt"), "--save", str(out), "--tau", "0.5", "--quiet", "--grid", "0",
            "--eval-root", str(synthetic_root), "--eval-name", "fmb", "--eval-split", "test"]
    assert cal.main(args) == 0
    saved = load_checkpoint(out)
    assert saved["calibration"]["tau"] == 0.5 and saved["calibration"]["curve"] is None
    by_tau = saved["calibration"]["eval_curve"]["by_tau"]
    assert set(by_tau) == {0.0, 0.5}  # the grid and the τ written
    from scripts.pretrain_segmenter import evaluate
    segmenter = build_segmenter(15)
    segmenter.load_state_dict(state)
    held_out = build_dataset({"name": "fmb", "root": str(synthetic_root), "mode": "full"}, "test")
    reference = evaluate(segmenter, held_out, 15, sources=("avg",))["avg"]  # the unadjusted segmenter, scored apart
    assert by_tau[0.0]["miou_present"] == pytest.approx(reference["miou_present"], abs=1e-4)
    assert by_tau[0.0]["iou"] == pytest.approx(reference["iou"], abs=1e-3)
    torch.testing.assert_close(saved["model"]["segmenter.segmentation_head.0.bias"].double(),
                               state["segmentation_head.0.bias"].double() - 0.5 * torch.log(weights.double()),
                               rtol=0, atol=1e-6)


def test_the_cli_refuses_what_it_cannot_calibrate(synthetic_root, tmp_path, capsys):
    _model_file(tmp_path / "plain.pt", synthetic_root, seg_class_weights=None)
    out = tmp_path / "out.pt"
    assert cal.main(["--model", str(tmp_path / "plain.pt"), "--save", str(out)]) == 2
    assert "plain cross-entropy" in capsys.readouterr().err and not out.exists()
    _model_file(tmp_path / "softmax.pt", synthetic_root, score_activation="softmax")
    assert cal.main(["--model", str(tmp_path / "softmax.pt"), "--save", str(out)]) == 2
    assert "score_activation" in capsys.readouterr().err and not out.exists()
    _model_file(tmp_path / "lost.pt", tmp_path / "absent")
    assert cal.main(["--model", str(tmp_path / "lost.pt"), "--save", str(out)]) == 2
    assert "training set" in capsys.readouterr().err and not out.exists()
    assert cal.main(["--model", str(tmp_path / "missing.pt"), "--save", str(out)]) == 2
    for bad in (["--tau", "x"], ["--tau", "-1"], ["--grid", "-0.5"]):
        with pytest.raises(SystemExit):
            cal.parse_args(["--model", "m.pt", "--save", "o.pt", *bad])


def test_several_views_are_adjusted_each_and_combined_by_their_mean_softmax():
    """Three views of one pixel: logits (10, 0), (0, 2), (0, 2). The mean of the logits favours class 0, the mean
    softmax (0.413, 0.587) class 1, which the inference regions use; τ shifts every view before the softmax."""
    views = np.array([[10.0, 0.0], [0.0, 2.0], [0.0, 2.0]])[:, :, None, None]  # (V, C, 1, 1)
    label = np.ones((1, 1), dtype=np.int64)
    hits = cal.confusions_by_tau([(views, label)], np.zeros(2), [0.0], 2)[0.0]
    assert hits[1, 1] == 1  # class 1 predicted
    single = cal.confusions_by_tau([(views.mean(axis=0), label)], np.zeros(2), [0.0], 2)[0.0]
    assert single[1, 0] == 1  # one (C, H, W) view: its argmax, class 0
    # ln w = (0, 3): at τ = 1 class 1 loses 3 in every view → (10, −3), (0, −1), (0, −1): class 0
    shifted = cal.confusions_by_tau([(views, label)], np.array([0.0, 3.0]), [0.0, 1.0], 2)
    assert shifted[0.0][1, 1] == 1 and shifted[1.0][1, 0] == 1
