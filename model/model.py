"""Models, selected by the config's "arch" section: ``{"type": "ResNet", "args": {...}}``.

Every model returns logits of shape (batch, num_classes).
"""
import torch
import torch.nn as nn

from base.base_model import BaseModel
from model.blocks import BasicBlock, Bottleneck
from utils.checkpoint.pretrained import load_matching, read_weights_file
from utils.errors import ConfigError

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

    def head_names(self) -> list[str]:
        return ["head"]


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


class TimmModel(BaseModel):
    """Any of timm's image models, for fine-tuning (https://huggingface.co/docs/timm).

    Args:
        model_name: a name of ``timm.list_models()``, e.g. "resnet18", "convnext_atto", "vit_small_patch16_224".
        num_classes: size of the new classifier head.
        pretrained: timm's own weights, downloaded once to its cache (needs the internet the first time).
        weights_file: a local .safetensors, .pth or .bin file of the model's weights (read tensors only);
            tensors of another shape (the head for 1000 ImageNet classes) keep their fresh values.
        in_chans: input channels; with a weights file for 3, the first convolution is adapted as timm does.
        strict: a weights file that fits fewer than half of the model's tensors is an error (the weights of
            another architecture, most likely); false loads what fits, with a warning.
        drop_rate, drop_path_rate, kwargs: passed to ``timm.create_model``.

    Examples:
        >>> TimmModel("resnet18", num_classes=10, weights_file="weights/resnet18.a1_in1k.safetensors")
    """

    def __init__(self, model_name: str, num_classes: int, pretrained: bool = False, weights_file: str | None = None,
                 in_chans: int = 3, drop_rate: float = 0.0, drop_path_rate: float = 0.0, strict: bool = True,
                 **kwargs):
        super().__init__()
        import timm

        if not timm.is_model(model_name):
            raise ConfigError("arch.args.model_name", f"{model_name!r} is not a timm model; see timm.list_models()")
        try:
            self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes,
                                           in_chans=in_chans, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                                           **kwargs)
        except OSError as error:
            raise ConfigError("arch.args.pretrained", f"cannot get timm's pretrained weights of {model_name} "
                                                      f"(offline, and not in the cache: {str(error)[:80]}); "
                                                      "download them once and set arch.args.weights_file") from None
        if weights_file is not None:
            weights = read_weights_file(weights_file)
            first_conv = f"{self.model.pretrained_cfg.get('first_conv')}.weight"
            if first_conv in weights and weights[first_conv].shape[1] != in_chans:
                weights[first_conv] = timm.models.adapt_input_conv(in_chans, weights[first_conv])
            load_matching(self.model, weights, weights_file, strict=_strict(strict))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def head_names(self) -> list[str]:
        classifier = self.model.pretrained_cfg.get("classifier") or []
        return [f"model.{name}" for name in ([classifier] if isinstance(classifier, str) else classifier)]

    def layer_ids(self) -> dict[str, int]:
        """timm's own layer grouping (``group_matcher``): 0 is the stem, the head is the last layer."""
        from timm.models import group_parameters

        layers = group_parameters(self.model, self.model.group_matcher(coarse=False), reverse=True)
        last = max(layers.values()) + 1 if layers else 0
        return {f"model.{name}": layers.get(name, last) for name, _ in self.model.named_parameters()}


class TorchvisionModel(BaseModel):
    """One of torchvision's classification models, its head replaced to fit ``num_classes``.

    Args:
        name: a name of ``torchvision.models.list_models()``, e.g. "resnet50", "efficientnet_b0".
        num_classes: size of the new head (the model's last linear layer).
        pretrained: torchvision's default weights, downloaded once to torch's cache.
        weights_file: a local .pth or .safetensors file of the model's weights (read tensors only).
        strict: a weights file that fits fewer than half of the model's tensors is an error; false loads
            what fits, with a warning.
        kwargs: passed to ``torchvision.models.get_model``.

    Examples:
        >>> TorchvisionModel("resnet50", num_classes=5, weights_file="weights/resnet50.pth")
    """

    def __init__(self, name: str, num_classes: int, pretrained: bool = False, weights_file: str | None = None,
                 strict: bool = True, **kwargs):
        super().__init__()
        import torchvision

        if name not in torchvision.models.list_models(torchvision.models):
            raise ConfigError("arch.args.name", f"{name!r} is not a torchvision classification model; see "
                                                "torchvision.models.list_models(torchvision.models)")
        self.model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        self.num_classes = num_classes
        if pretrained:
            try:
                weights = torchvision.models.get_model_weights(name).DEFAULT.get_state_dict(progress=False)
            except OSError as error:
                raise ConfigError("arch.args.pretrained", f"cannot download torchvision's weights of {name} "
                                                          f"({str(error)[:80]}); download them once and set "
                                                          "arch.args.weights_file") from None
            load_matching(self.model, weights, f"torchvision's {name} weights")
        if weights_file is not None:
            load_matching(self.model, read_weights_file(weights_file), weights_file, strict=_strict(strict))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def head_names(self) -> list[str]:
        """The last layer that outputs num_classes values: the replaced head."""
        heads = [name for name, module in self.model.named_modules()
                 if getattr(module, "out_features", getattr(module, "out_channels", None)) == self.num_classes]
        return [f"model.{heads[-1]}"] if heads else []


def _strict(value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError("arch.args.strict", f"must be true or false, got {value!r}")
    return value
