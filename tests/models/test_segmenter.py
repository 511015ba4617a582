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


class _MirrorOf(torch.nn.Module):
    """A 3×3 convolution (zero padding, same size) with a chosen kernel: 2 output classes."""

    def __init__(self, kernel: torch.Tensor) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1, bias=False).double()
        with torch.no_grad():
            self.conv.weight.copy_(kernel)

    def forward(self, x):
        return self.conv(x)


def test_view_scores_map_every_view_back_onto_the_image():
    """The plain view is the model's own pass; a mirrored view is un-mirrored (a mirror-symmetric model gives the
    plain scores back, a lopsided one on a symmetric image gives the mirrored scores); rescaled views come back at
    the image's size, and on a pointwise model and a smooth image they agree with the plain pass."""
    from models.segmenter import segment, view_scores

    torch.manual_seed(0)
    image = torch.rand(1, 1, 12, 10, dtype=torch.float64)
    symmetric = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    symmetric = symmetric + symmetric.flip(-1)
    model = _MirrorOf(symmetric)
    plain, mirrored = view_scores(model, image, (1.0,), flip=True)
    assert torch.equal(plain, segment(model, image))
    torch.testing.assert_close(mirrored, plain, rtol=0, atol=1e-12)

    lopsided = _MirrorOf(torch.rand(2, 1, 3, 3, dtype=torch.float64))
    even = torch.cat([image, image.flip(-1)], dim=-1)  # left-right symmetric, 12 × 20
    plain, mirrored = view_scores(lopsided, even, (1.0,), flip=True)
    torch.testing.assert_close(mirrored, plain.flip(-1), rtol=0, atol=1e-12)
    assert not torch.allclose(mirrored, plain)

    pointwise = torch.nn.Conv2d(1, 2, 1).double()
    ramp = torch.linspace(0, 1, 16, dtype=torch.float64).repeat(12, 1)[None, None]  # smooth, 12 × 16
    views = view_scores(pointwise, ramp, (1.0, 1.5, 2.0), flip=True)
    assert len(views) == 6 and all(v.shape == (1, 2, 12, 16) for v in views)
    for view in views[1:]:
        torch.testing.assert_close(view[..., 2:-2], views[0][..., 2:-2], rtol=0, atol=1e-9)


def test_view_scores_pad_each_view_to_the_segmenters_stride():
    from models.segmenter import view_scores

    torch.manual_seed(0)
    model = build_segmenter(3).double().eval()
    image = torch.rand(1, 1, 40, 36, dtype=torch.float64)  # 1.5× is 60 × 54: not a multiple of 16
    views = view_scores(model, image, (1.0, 1.5))
    assert [v.shape for v in views] == [(1, 3, 40, 36)] * 2
