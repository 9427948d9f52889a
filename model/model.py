"""Models, selected by the config's "arch" section: ``{"type": "ResNet", "args": {...}}``.

Every model returns logits of shape (batch, num_classes).
"""
import torch
import torch.nn as nn

from base.base_model import BaseModel
from model.blocks import BasicBlock, Bottleneck

BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(BaseModel):
    """A residual network for images of any size, from 8x8 digits to 224x224 photos.

    Args:
        num_blocks: blocks per stage; each stage after the first halves the resolution.
            ResNet-18 is [2, 2, 2, 2] with "basic", ResNet-50 is [3, 4, 6, 3] with "bottleneck".
        num_classes: size of the output.
        in_channels: 1 for grayscale, 3 for RGB.
        block: "basic" or "bottleneck".
        widths: channels of each stage (times 4 at the output of bottleneck blocks).
        stem: "small" (a 3x3 convolution, for inputs up to about 64x64) or "imagenet"
            (a 7x7 stride-2 convolution and max pooling, for 224x224 inputs).
        dropout: dropout before the classifier.

    Examples:
        >>> ResNet([2, 2, 2, 2], num_classes=1000, in_channels=3, stem="imagenet")   # ResNet-18
    """

    def __init__(
        self,
        num_blocks: list[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        block: str = "basic",
        widths: list[int] = (64, 128, 256, 512),
        stem: str = "small",
        dropout: float = 0.0,
    ):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        if len(widths) != len(num_blocks):
            raise ValueError(f"widths has {len(widths)} entries but num_blocks has {len(num_blocks)}")
        block_class = BLOCKS[block]
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
            )
        elif stem == "small":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True),
            )
        else:
            raise ValueError(f"stem must be 'small' or 'imagenet', got {stem!r}")

        stages, channels = [], widths[0]
        for stage, (count, width) in enumerate(zip(num_blocks, widths)):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                stages.append(block_class(channels, width, stride))
                channels = width * block_class.expansion
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class MLP(BaseModel):
    """A multi-layer perceptron for tabular data.

    Examples:
        >>> MLP(in_features=4, num_classes=3, hidden=[32, 32])
    """

    def __init__(self, in_features: int, num_classes: int, hidden: list[int] = (64, 64), dropout: float = 0.0):
        super().__init__()
        layers, width = [], in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))
