"""L_seg's class weights (``loss.seg_class_weights``, an extension): the weighted cross-entropy against its
definition, median-frequency weights on hand-computable shares, settings checks, and the trainer using them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import engine.trainer as trainer_module
from data.datasets import build_dataset
from engine.trainer import Trainer
from losses import LossSettings, UAAFusionLoss, segmentation_loss
from losses.class_weights import log_frequency_weights, median_frequency_weights, resolve_seg_class_weights
from tests.helpers.factories import tiny_train_config


def test_weighted_segmentation_loss_is_the_weighted_mean_of_pixel_losses():
    """Σ_p w_{y_p} · (−log softmax(z_p)_{y_p}) / Σ_p w_{y_p}, ignored pixels left out, averaged over the outputs."""
    g = torch.Generator().manual_seed(0)
    outputs = [torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    labels[0, 0, :3] = 255
    weights = torch.tensor([0.2, 1.0, 3.5])
    expected = []
    for out in outputs:
        valid = labels != 255
        logp = out.log_softmax(dim=1).permute(0, 2, 3, 1)[valid]  # (P, C)
        y = labels[valid]
        w = weights.double()[y]
        expected.append((w * -logp[torch.arange(len(y)), y]).sum() / w.sum())
    got = segmentation_loss(outputs, labels, 255, (), weights)
    assert got.item() == pytest.approx((sum(expected) / 2).item(), rel=1e-6)
    plain = segmentation_loss(outputs, labels, 255)
    assert segmentation_loss(outputs, labels, 255, (), torch.ones(3)).item() == pytest.approx(plain.item(), rel=1e-6)
    assert got.item() != pytest.approx(plain.item(), rel=1e-3)


def test_log_frequency_weights_golden():
    # 1 / ln(1.02 + f): f = 0.9 → 1/ln(1.92) = 1.5330, 0.06 → 1/ln(1.08) = 12.9936, 0 → 1/ln(1.02) = 50.4983
    weights = log_frequency_weights(np.array([0.9, 0.06, 0.04, 0.0]))
    torch.testing.assert_close(weights, torch.tensor([1.53298, 12.99359, 17.16181, 50.49835]), atol=1e-4, rtol=0)
    torch.testing.assert_close(resolve_seg_class_weights("log", 4, np.array([90, 6, 4, 0])), weights)
    with pytest.raises(ValueError, match="labelled pixels"):
        log_frequency_weights(np.zeros(3))


def test_median_frequency_weights_golden():
    # shares 0.9, 0.06, 0.04, 0 → median of the present ones 0.06 → 0.0667, 1, 1.5, cap for the absent class
    weights = median_frequency_weights(np.array([0.9, 0.06, 0.04, 0.0]))
    torch.testing.assert_close(weights, torch.tensor([0.06 / 0.9, 1.0, 1.5, 50.0]))
    assert median_frequency_weights(np.array([1e-6, 0.5, 0.5]))[0].item() == 50.0  # capped
    with pytest.raises(ValueError, match="labelled pixels"):
        median_frequency_weights(np.zeros(3))


@pytest.mark.parametrize("value", ["mean", [], [1.0, -1.0], [True, False], 3])
def test_bad_settings_are_refused(value):
    with pytest.raises(ValueError, match="seg_class_weights"):
        LossSettings(seg_class_weights=value)


def test_resolving_the_settings():
    assert resolve_seg_class_weights(None, 3) is None
    torch.testing.assert_close(resolve_seg_class_weights([1, 2, 0.5], 3), torch.tensor([1.0, 2.0, 0.5]))
    with pytest.raises(ValueError, match="2 values but the dataset has 3 classes"):
        resolve_seg_class_weights([1, 2], 3)
    with pytest.raises(ValueError, match="training labels"):
        resolve_seg_class_weights("median", 3)
    torch.testing.assert_close(resolve_seg_class_weights("median", 4, np.array([90, 6, 4, 0])),
                               median_frequency_weights(np.array([0.9, 0.06, 0.04, 0.0])))
    with pytest.raises(ValueError, match="pass the resolved class_weights"):
        UAAFusionLoss(LossSettings(seg_class_weights="median"))


def test_the_loss_passes_its_class_weights_to_l_seg():
    g = torch.Generator().manual_seed(1)
    fused, ir, vi, w_ir = (torch.rand(1, 1, 4, 4, generator=g) for _ in range(4))
    seg = {k: torch.randn(1, 3, 4, 4, generator=g) for k in ("ir", "vi", "fused")}
    labels = torch.randint(0, 3, (1, 4, 4), generator=g)
    weights = torch.tensor([0.1, 1.0, 4.0])
    terms = UAAFusionLoss(LossSettings(seg_class_weights=[0.1, 1.0, 4.0]), weights)(fused, ir, vi, w_ir, 1 - w_ir,
                                                                                 seg, labels)
    assert terms["seg"].item() == pytest.approx(segmentation_loss(list(seg.values()), labels, 255, (), weights).item())


def test_the_trainer_weights_l_seg_by_the_training_labels(synthetic_root, tmp_path, monkeypatch):
    cfg = tiny_train_config(synthetic_root, "train.epochs=1", "train.max_steps_per_epoch=1", "data.val_pairs=0",
                            "train.segmenter_pretrain_epochs=1", "loss.seg_class_weights=median")
    trainer = Trainer(cfg, tmp_path, show_progress=False)
    full = build_dataset({**trainer._dataset_cfg(), "mode": "full"}, cfg["data"]["train_split"])
    counts = np.zeros(trainer.num_classes)
    for i in range(len(full)):  # the full-size label maps, read again here
        label = full[i]["label"].numpy().ravel()
        counts += np.bincount(label[label < trainer.num_classes], minlength=trainer.num_classes)
    expected = median_frequency_weights(counts / counts.sum())
    weights = trainer.criterion.class_weights
    torch.testing.assert_close(weights, expected)
    assert not torch.allclose(weights, torch.ones_like(weights))
    seen = []

    def spy(outputs, labels, ignore_index=255, ignore_classes=(), class_weights=None):
        seen.append(class_weights)
        return segmentation_loss(outputs, labels, ignore_index, ignore_classes, class_weights)

    monkeypatch.setattr(trainer_module, "segmentation_loss", spy)
    trainer.fit()
    assert seen and all(w is weights for w in seen)  # the segmenter's pre-training stage uses them too
    assert trainer.finished
