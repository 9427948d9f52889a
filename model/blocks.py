"""Building blocks of the ResNet (He et al., 2016): the basic and the bottleneck residual block."""
import torch
import torch.nn as nn


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """A convolution without bias followed by batch normalization."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.residual = nn.Sequential(
            conv_bn(in_channels, width, 3, stride), nn.ReLU(inplace=True), conv_bn(width, out_channels, 3)
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv_bn(in_channels, out_channels, 1, stride)
        # Start each block as the identity: the last BatchNorm of the residual branch scales to zero.
        nn.init.zeros_(self.residual[-1][1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(BasicBlock):
    """A 1x1 reduction, a 3x3 convolution and a 1x1 expansion with a shortcut (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        nn.Module.__init__(self)
        out_channels = width * self.expansion
        self.residual = nn.Sequential(
            conv_bn(in_channels, width, 1), nn.ReLU(inplace=True),
            conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
            conv_bn(width, out_channels, 1),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = conv_bn(in_channels, out_channels, 1, stride)
        nn.init.zeros_(self.residual[-1][1].weight)
