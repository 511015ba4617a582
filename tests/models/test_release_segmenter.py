"""The release's segmenter (docs/RELEASE.md): checkpoint layout, loading, output stride, block maths, modes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.release.segmenter import InvertedResidual, ReleaseSegmenter
from tests.helpers.release_keys import read_key_listing, sub_listing, synthetic_release_checkpoint
from tests.helpers.release_loader import (
    ReleaseStateDictError,
    load_release_state_dict,
    model_s_state_dict_keys,
    select_prefixed,
)

LISTING_PATH = Path(__file__).resolve().parents[1] / "assets" / "release_state_dict.txt"


@pytest.fixture(scope="module")
def listing():
    return read_key_listing(LISTING_PATH)


@pytest.fixture(scope="module")
def checkpoint(listing):
    return synthetic_release_checkpoint(listing, seed=0)


@pytest.fixture(scope="module")
def loaded(checkpoint) -> ReleaseSegmenter:
    """Release-shaped segmenter filled with the synthetic weights, eval mode (shared, do not mutate)."""
    model = ReleaseSegmenter()
    load_release_state_dict(model, checkpoint["model_s"])
    return model.eval()


# --- listing and synthetic checkpoint -----------------------------------------------------------------------


def test_listing_parses(listing):
    assert len(listing) == 575
    assert listing["model_f.alpha"] == ((5,), torch.float32)
    assert listing["model_s.cat_conv.1.num_batches_tracked"] == ((), torch.int64)
    assert listing["model_s.cls_conv.weight"] == ((15, 256, 1, 1), torch.float32)


def test_listing_rejects_malformed_lines(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("model_s.a.weight\t(3, 1)\ttorch.float32\nmodel_s.b.weight\t3, 1\ttorch.float32\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: not a shape tuple"):
        read_key_listing(bad)
    bad.write_text("model_s.a.weight\t(3,)\ttorch.floaty\n")
    with pytest.raises(ValueError, match="not a torch dtype"):
        read_key_listing(bad)
    bad.write_text("model_s.a.weight\t(3,)\ttorch.float32\nmodel_s.a.weight\t(3,)\ttorch.float32\n")
    with pytest.raises(ValueError, match="repeated key"):
        read_key_listing(bad)


def test_synthetic_checkpoint_matches_listing(listing, checkpoint):
    assert set(checkpoint) == {"model_f", "model_s"}
    for top, sd in checkpoint.items():
        expected = sub_listing(listing, top + ".")
        assert list(sd) == list(expected)
        for key, (shape, dtype) in expected.items():
            assert tuple(sd[key].shape) == shape and sd[key].dtype == dtype, key
    s, f = checkpoint["model_s"], checkpoint["model_f"]
    assert all((v > 0).all() for k, v in s.items() if k.endswith("running_var"))
    assert s["cat_conv.1.num_batches_tracked"].dim() == 0
    assert f["init_conv_ir.conv_unit.1.weight"].item() == pytest.approx(0.25, abs=0.05)  # PReLU slope
    assert f["blockflow.0.conv4.0.conv_unit.2.bias"].abs().item() < 1.0  # a (1,) bias is not a PReLU slope
    again = synthetic_release_checkpoint(listing, seed=0)
    assert torch.equal(again["model_s"]["cls_conv.weight"], s["cls_conv.weight"])
    other = synthetic_release_checkpoint(listing, seed=1)
    assert not torch.equal(other["model_s"]["cls_conv.weight"], s["cls_conv.weight"])


# --- layout and loading -----------------------------------------------------------------------------------


def test_state_dict_equals_release_listing(listing):
    model = ReleaseSegmenter()
    expected = {k: v for k, v in listing.items() if k.startswith("model_s.")}
    got = {"model_s." + k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected
    assert model_s_state_dict_keys(model) == list(got)
    assert model.num_classes == 15


def test_load_synthetic_checkpoint(checkpoint, loaded):
    sd = checkpoint["model_s"]
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, sd[key]), key
    # The whole checkpoint and a flat prefixed dict select the same tensors.
    model = ReleaseSegmenter()
    load_release_state_dict(model, checkpoint)
    flat = {f"{top}.{k}": v for top, part in checkpoint.items() for k, v in part.items()}
    assert select_prefixed(flat).keys() == sd.keys()
    load_release_state_dict(model, flat)
    assert torch.equal(model.cls_conv.weight, sd["cls_conv.weight"])


def test_load_reports_mismatches(checkpoint):
    model = ReleaseSegmenter()
    before = model.cls_conv.weight.detach().clone()
    sd = dict(checkpoint["model_s"])
    del sd["cat_conv.4.bias"]
    sd["cls_conv.weight"] = torch.zeros(9, 256, 1, 1)
    sd["aspp.branch1.0.weight"] = torch.zeros(1)
    with pytest.raises(ReleaseStateDictError) as info:
        load_release_state_dict(model, sd)
    message = str(info.value)
    assert "1 missing keys" in message and "model_s.cat_conv.4.bias" in message
    assert "1 unexpected keys" in message and "model_s.aspp.branch1.0.weight" in message
    assert "model_s.cls_conv.weight: checkpoint (9, 256, 1, 1) vs module (15, 256, 1, 1)" in message
    assert torch.equal(model.cls_conv.weight, before)  # nothing half-loaded


def test_constructor_validates():
    with pytest.raises(ValueError, match="output must be one of"):
        ReleaseSegmenter(output="softmax")
    model = ReleaseSegmenter(num_classes=3, in_channels=2)
    assert model.cls_conv.out_channels == 3 and model.feature_extractor.features[0][0].in_channels == 2
    with pytest.raises(ValueError, match=r"expected \(N, 2, H, W\)"):
        model(torch.rand(1, 1, 32, 32))


# --- outputs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (67, 45)])
def test_output_shape_and_range(loaded, size):
    x = torch.rand(2, 1, *size)
    with torch.no_grad():
        y = loaded(x)
    assert y.shape == (2, 15, *size)
    assert ((y > 0) & (y < 1)).all()


def test_logits_mode_differs_only_by_sigmoid(loaded):
    logits_model = ReleaseSegmenter(output="logits")
    logits_model.load_state_dict(loaded.state_dict())
    logits_model.eval()
    x = torch.rand(1, 1, 40, 56)
    with torch.no_grad():
        scores, logits = loaded(x), logits_model(x)
    assert logits.shape == scores.shape and (logits < 0).any()
    torch.testing.assert_close(torch.sigmoid(logits), scores, rtol=0, atol=0)
    torch.testing.assert_close(loaded.forward_logits(x), logits, rtol=0, atol=0)


# --- output stride and dilation ---------------------------------------------------------------------------


def test_output_stride_16(loaded):
    sizes: dict[int, torch.Size] = {}
    features = loaded.feature_extractor.features
    hooks = [features[i].register_forward_hook(lambda m, a, o, i=i: sizes.__setitem__(i, o.shape)) for i in (3, 17)]
    try:
        with torch.no_grad():
            loaded(torch.rand(1, 1, 64, 64))
    finally:
        for hook in hooks:
            hook.remove()
    assert sizes[3] == (1, 24, 16, 16)  # low level: 1/4
    assert sizes[17] == (1, 320, 4, 4)  # high level: 1/16
    with torch.no_grad():
        low, high = loaded.extract_features(torch.rand(1, 1, 67, 45))
    assert low.shape == (1, 24, 17, 12) and high.shape == (1, 320, 5, 3)  # ceil at every stride-2 step


def test_dilation_rule(loaded):
    f = loaded.feature_extractor.features

    def geometry(conv: nn.Conv2d) -> tuple:
        return conv.stride, conv.dilation, conv.padding

    # Before feature 14 nothing changes: the stride-2 depthwise convs of features 2, 4, 7 stay.
    assert geometry(f[7].conv[3]) == ((2, 2), (1, 1), (1, 1))
    assert geometry(f[13].conv[3]) == ((1, 1), (1, 1), (1, 1))
    # Feature 14's stride-2 3x3 depthwise conv becomes stride 1 with dilation = padding = 1.
    assert geometry(f[14].conv[3]) == ((1, 1), (1, 1), (1, 1))
    # Every other 3x3 conv of features 14-17 gets dilation = padding = 2.
    for i in (15, 16, 17):
        assert geometry(f[i].conv[3]) == ((1, 1), (2, 2), (2, 2)), i
    # 1x1 convs are untouched.
    for i in (14, 15, 16, 17):
        assert geometry(f[i].conv[0]) == ((1, 1), (1, 1), (0, 0)), i
        assert geometry(f[i].conv[6]) == ((1, 1), (1, 1), (0, 0)), i
    assert [i for i in range(1, 18) if f[i].use_residual] == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]


# --- block maths ------------------------------------------------------------------------------------------


def _randomise_bn(module: nn.Module, gen: torch.Generator) -> None:
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.weight.data = 1 + 0.2 * torch.randn(n, generator=gen)
            bn.bias.data = 0.2 * torch.randn(n, generator=gen)
            bn.running_mean = 0.2 * torch.randn(n, generator=gen)
            bn.running_var = 0.5 + torch.rand(n, generator=gen)


def _manual_block(x: torch.Tensor, block: InvertedResidual, stride: int, dilation: int, residual: bool) -> torch.Tensor:
    """The block by hand with torch.nn.functional, geometry given explicitly (not read from the block)."""
    layers = list(block.conv)

    def bn(y: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
        return F.batch_norm(y, m.running_mean, m.running_var, m.weight, m.bias, training=False, eps=1e-5)

    y = x
    if len(layers) == 8:  # t > 1: expand first
        y = F.relu6(bn(F.conv2d(y, layers[0].weight), layers[1]))
        layers = layers[3:]
    dw = layers[0].weight
    y = F.relu6(bn(F.conv2d(y, dw, stride=stride, padding=dilation, dilation=dilation, groups=dw.shape[0]), layers[1]))
    y = bn(F.conv2d(y, layers[3].weight), layers[4])
    return x + y if residual else y


@pytest.mark.parametrize(
    "index, in_ch, stride, dilation, residual",
    [
        (1, 32, 1, 1, False),  # t = 1, 32 -> 16
        (2, 16, 2, 1, False),  # stride 2
        (3, 24, 1, 1, True),  # stride 1, 24 -> 24: residual
        (14, 96, 1, 1, False),  # stride 2 turned into 1, 96 -> 160: still no residual
        (15, 160, 1, 2, True),  # dilated, residual
    ],
)
def test_inverted_residual_by_hand(index, in_ch, stride, dilation, residual):
    gen = torch.Generator().manual_seed(index)
    block = ReleaseSegmenter(num_classes=2).feature_extractor.features[index]
    _randomise_bn(block, gen)
    block.eval()
    assert block.use_residual is residual
    x = torch.randn(1, in_ch, 9, 7, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _manual_block(x, block, stride, dilation, residual), rtol=1e-5, atol=1e-5)


# --- modes (release row 15) -------------------------------------------------------------------------------


def test_eval_deterministic_train_dropout_differs(checkpoint):
    model = ReleaseSegmenter()
    load_release_state_dict(model, checkpoint["model_s"])
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == b.shape and not torch.allclose(a, b)
    assert model.cat_conv[1].num_batches_tracked.item() == checkpoint["model_s"]["cat_conv.1.num_batches_tracked"] + 2
