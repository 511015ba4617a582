"""The segmenter of the authors' release (``model_s`` in their checkpoint), rebuilt so that its weights load.

It is not the paper's DeepLabV3+ (release row 8): a MobileNetV2 encoder with a 1-channel stem run at output
stride 16, and a DeepLabV3+-style decoder without ASPP. The layout, module names and indices follow
docs/RELEASE.md and ``release_state_dict.txt`` exactly, so every ``model_s.*`` key loads by name.

Weight initialisation is PyTorch's default for every layer (Kaiming-uniform convs, BN weight 1 / bias 0);
no pretrained weights are downloaded. The module is meant to be filled from the release's checkpoint.

All activations are out-of-place so that gradients with respect to the input (the attribution code of
docs/RELEASE.md (networks)) and forward hooks see unmodified tensors.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

# (t, c, n, s): expansion factor, output channels, repeats, stride of the first repeat (MobileNetV2, Table 2).
MOBILENETV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LOW_LEVEL_END = 4  # features[0:4] give the stride-4, 24-channel low-level map
DILATE_FROM = 14  # features[14:] run dilated so that the encoder stops at stride 16
NUM_FEATURES = 18  # features 0..17; the release drops MobileNetV2's final 1x1 conv to 1280 channels
OUTPUTS = ("sigmoid", "logits")


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand → BN → ReLU6] → 3x3 depthwise → BN → ReLU6 → 1x1 project → BN.

    ``conv`` indices follow the release: t = 1 → 0 dw, 1 BN, 2 ReLU6, 3 project, 4 BN;
    t > 1 → 0 expand, 1 BN, 2 ReLU6, 3 dw, 4 BN, 5 ReLU6, 6 project, 7 BN.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the depthwise conv (1 or 2).
        expand_ratio: t, hidden channels = in_channels * t.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        # Decided once from the constructor arguments, as in the reference implementations: turning a stride-2
        # conv into a stride-1 one later (output stride 16) does not add a shortcut.
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in, H, W) → (N, out, H', W')."""
        y = self.conv(x)
        return x + y if self.use_residual else y


def mobilenetv2_features(in_channels: int = 1) -> nn.Sequential:
    """The 18 feature layers: stem (3x3 conv stride 2 → BN → ReLU6) and the 17 inverted residual blocks.

    Args:
        in_channels: image channels of the stem conv.

    Returns:
        ``nn.Sequential`` mapping (N, in_channels, H, W) to (N, 320, H/32, W/32) before any dilation.
    """
    layers: list[nn.Module] = [
        nn.Sequential(
            nn.Conv2d(in_channels, STEM_CHANNELS, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(STEM_CHANNELS),
            nn.ReLU6(),
        )
    ]
    channels = STEM_CHANNELS
    for t, c, n, s in MOBILENETV2_SETTINGS:
        for i in range(n):
            layers.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
            channels = c
    return nn.Sequential(*layers)


def dilate_for_output_stride(blocks: Iterable[nn.Module], dilation: int = 2) -> None:
    """Remove the downsampling of ``blocks`` in place and dilate their 3x3 convs instead.

    A stride-2 conv becomes stride 1 (a 3x3 one gets dilation = padding = ``dilation // 2``); every other
    3x3 conv gets dilation = padding = ``dilation``. 1x1 convs keep padding 0 and dilation 1.

    Args:
        blocks: modules whose convs are rewritten (for output stride 16: ``features[14:]``).
        dilation: dilation of the 3x3 convs after the removed stride.
    """
    for block in blocks:
        for module in block.modules():
            if not isinstance(module, nn.Conv2d):
                continue
            is_3x3 = module.kernel_size == (3, 3)
            if module.stride == (2, 2):
                module.stride = (1, 1)
                if is_3x3:
                    module.dilation = (dilation // 2, dilation // 2)
                    module.padding = (dilation // 2, dilation // 2)
            elif is_3x3:
                module.dilation = (dilation, dilation)
                module.padding = (dilation, dilation)


class ReleaseFeatureExtractor(nn.Module):
    """MobileNetV2 encoder at output stride 16 (``model_s.feature_extractor``).

    Args:
        in_channels: image channels.
    """

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.features = mobilenetv2_features(in_channels)
        assert len(self.features) == NUM_FEATURES
        dilate_for_output_stride(self.features[DILATE_FROM:], dilation=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, in, H, W) → low level (N, 24, ⌈H/4⌉, ⌈W/4⌉), high level (N, 320, ⌈H/16⌉, ⌈W/16⌉)."""
        low = x
        for layer in self.features[:LOW_LEVEL_END]:
            low = layer(low)
        high = low
        for layer in self.features[LOW_LEVEL_END:]:
            high = layer(high)
        return low, high


class ReleaseSegmenter(nn.Module):
    """The release's segmenter: MobileNetV2 (output stride 16) + DeepLabV3+-style decoder without ASPP.

    Args:
        num_classes: C, output channels (15 in the release: FMB's 14 classes plus ``unlabeled``).
        in_channels: image channels (1 in the release: it segments gray / fused images).
        output: ``"sigmoid"`` returns per-class sigmoid scores in (0, 1) as the release does (release row 8);
            ``"logits"`` returns the raw class scores.

    Note:
        Train mode matters here: the release runs its IG passes with the segmenter in training mode
        (release row 15), which turns on ``cat_conv``'s two dropouts and updates the BN statistics.
    """

    low_level_channels = 24
    high_level_channels = 320
    shortcut_channels = 48
    decoder_channels = 256

    def __init__(self, num_classes: int = 15, in_channels: int = 1, output: str = "sigmoid") -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.output = output
        self.feature_extractor = ReleaseFeatureExtractor(in_channels)
        self.shortcut_conv = nn.Sequential(
            nn.Conv2d(self.low_level_channels, self.shortcut_channels, 1),
            nn.BatchNorm2d(self.shortcut_channels),
            nn.ReLU(),
        )
        mid = self.decoder_channels
        self.cat_conv = nn.Sequential(
            nn.Conv2d(self.high_level_channels + self.shortcut_channels, mid, 3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Dropout(0.1),
        )
        self.cls_conv = nn.Conv2d(mid, num_classes, 1)

    def extract_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder only.

        Args:
            x: (N, in_channels, H, W) in [0, 1].

        Returns:
            low level (N, 24, ⌈H/4⌉, ⌈W/4⌉) and high level (N, 320, ⌈H/16⌉, ⌈W/16⌉).
        """
        return self.feature_extractor(x)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores before the sigmoid, whatever ``output`` says.

        Args:
            x: (N, in_channels, H, W) in [0, 1]; H and W need not be multiples of 16.

        Returns:
            (N, C, H, W) logits.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        low, high = self.feature_extractor(x)
        low = self.shortcut_conv(low)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        y = self.cls_conv(self.cat_conv(torch.cat((high, low), dim=1)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x``.

        Args:
            x: (N, in_channels, H, W) in [0, 1].

        Returns:
            (N, C, H, W): sigmoid scores in (0, 1) when ``output == "sigmoid"``, else logits.
        """
        y = self.forward_logits(x)
        return torch.sigmoid(y) if self.output == "sigmoid" else y
