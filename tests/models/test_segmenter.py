"""Segmenter factory: DeepLabV3+ logits, encoder_weights null / imagenet offline / local file, padding helper."""
from __future__ import annotations

import pytest
import torch

from models.segmenter import SegmenterWeightsError, build_segmenter, pad_to_multiple, segmenter_stride


def test_deeplab_returns_logits_of_the_right_shape():
    seg = build_segmenter(5).eval()
    with torch.no_grad():
        out = seg(torch.rand(2, 1, 32, 48))
    assert out.shape == (2, 5, 32, 48)
    assert out.min() < 0 or out.max() > 1  # raw logits, no activation
    assert segmenter_stride(seg) == 16


def test_imagenet_weights_offline_fall_back_with_a_warning(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(UserWarning, match="random initialisation"):
        seg = build_segmenter(3, encoder_weights="imagenet")
    assert seg(torch.rand(2, 1, 32, 32)).shape == (2, 3, 32, 32)


def test_local_weight_file_full_and_encoder_only(tmp_path):
    torch.manual_seed(0)
    source = build_segmenter(3)
    full = tmp_path / "full.pt"
    torch.save(source.state_dict(), full)
    loaded = build_segmenter(3, encoder_weights=str(full))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))
    encoder_only = tmp_path / "encoder.pt"
    torch.save({"state_dict": source.encoder.state_dict()}, encoder_only)
    partial = build_segmenter(3, encoder_weights=str(encoder_only))
    assert torch.equal(partial.encoder.features[0][0].weight, source.encoder.features[0][0].weight)


def test_bad_weight_files_are_named(tmp_path):
    with pytest.raises(SegmenterWeightsError, match="not found"):
        build_segmenter(3, encoder_weights=str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SegmenterWeightsError, match="junk.pt"):
        build_segmenter(3, encoder_weights=str(junk))
    wrong = tmp_path / "wrong.pt"
    torch.save({"encoder.something": torch.zeros(1)}, wrong)
    with pytest.raises(SegmenterWeightsError, match="does not fit"):
        build_segmenter(3, encoder_weights=str(wrong))


def test_pad_to_multiple_reflects_and_reports_size():
    x = torch.arange(15.0).view(1, 1, 3, 5)
    padded, size = pad_to_multiple(x, 4)
    assert padded.shape == (1, 1, 4, 8) and size == (3, 5)
    assert torch.equal(padded[..., :3, :5], x)
    assert torch.equal(padded[..., 3, :5], x[..., 1, :])  # reflect
