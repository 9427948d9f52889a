"""``trainer.freeze_backbone_epochs``: train only the head for the first N epochs, then everything.

The optimizer holds every parameter from the start; a frozen parameter simply has no gradient, so
the optimizer leaves it (and its state) alone. Which parameters are frozen depends on the epoch
alone, so a run resumed in or after the frozen epochs continues exactly as one never stopped.
"""
import logging

import torch
from torch import nn

from utils.errors import ConfigError

logger = logging.getLogger(__name__)


class BackboneFreezer:
    """Freezes the backbone of ``model`` (every parameter outside ``model.head_names()``) for ``epochs`` epochs.

    The BatchNorm layers of the backbone are kept in eval mode while frozen, so that their running
    statistics stay those of the pretrained weights.

    Examples:
        >>> freezer = BackboneFreezer(model, epochs=2)
        >>> freezer.set_epoch(1)      # before the epoch: True when the frozen set changed
        >>> model.train(); freezer.freeze_norms()
    """

    def __init__(self, model: nn.Module, epochs: int):
        self.epochs = epochs
        self.frozen = False
        self.backbone, self.norms = [], []
        if not epochs:
            return
        head = model.head_parameters() if hasattr(model, "head_parameters") else {}
        if not head:
            raise ConfigError("trainer.freeze_backbone_epochs", f"{type(model).__name__} does not name its head "
                                                                "(head_names()): use a TimmModel, TorchvisionModel "
                                                                "or ResNet, or define head_names in your model")
        head_ids = {id(p) for p in head.values()}
        self.backbone = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
        head_prefixes = tuple(f"{name}." for name in model.head_names())
        self.norms = [m for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                      and not f"{name}.".startswith(head_prefixes)]

    def set_epoch(self, epoch: int) -> bool:
        """Freeze or unfreeze for ``epoch``; True when that changed which parameters train."""
        frozen = epoch <= self.epochs
        if frozen == self.frozen:
            return False
        self.frozen = frozen
        for param in self.backbone:
            param.requires_grad_(not frozen)
        logger.info("epoch %d: %s", epoch, f"training the head only (backbone frozen until epoch {self.epochs})"
                    if frozen else "training every parameter (backbone unfrozen)")
        return True

    @torch.no_grad()
    def freeze_norms(self) -> None:
        """After ``model.train()``: keep the frozen BatchNorm layers in eval mode (running statistics fixed)."""
        if self.frozen:
            for module in self.norms:
                module.eval()


def rewrap_ddp(model: nn.Module) -> nn.Module:
    """DistributedDataParallel registers the parameters that need gradients when it is built: after
    freezing or unfreezing, build it again around the same module (a plain model is returned as is)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return nn.parallel.DistributedDataParallel(model.module, device_ids=model.device_ids)
    return model
