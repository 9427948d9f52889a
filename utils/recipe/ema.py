"""``trainer.ema``: an exponential moving average of the weights, the model that is validated and kept.

Built on ``torch.optim.swa_utils``: an ``AveragedModel`` holds the averaged copy (parameters and
buffers, so BatchNorm statistics too), and ``get_ema_multi_avg_fn`` does the update, one fused
``lerp`` over all tensors after every optimizer step. The update is driven from here rather than by
``AveragedModel.update_parameters``, which reads its step counter from the device (a host sync on
every step on a GPU); the counter here is a Python int, saved in the checkpoint.
"""
import itertools

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class ModelEma:
    """The EMA of a model's weights: ``ema = decay * ema + (1 - decay) * weights`` after each step.

    Args:
        model: the plain model (not wrapped), already on its device.
        decay: the weight of the average, e.g. 0.9998 (about the last 5,000 steps).
        warmup: a smaller decay early on, as timm's ModelEmaV3 (``1 - (1 + step) ** -2/3``, at most
            ``decay``), so that the average is not dominated by the random or pretrained start.

    Examples:
        >>> ema = ModelEma(model, decay=0.999)
        >>> optimizer.step(); ema.update(model)
        >>> ema.module(inputs)     # the averaged model
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = False, validate_both: bool = False):
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.averaged.requires_grad_(False).eval()
        self.decay, self.warmup, self.validate_both = decay, warmup, validate_both
        self.num_updates = 0

    @property
    def module(self) -> nn.Module:
        """The averaged model, an ordinary copy of the model's class."""
        return self.averaged.module

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, 1.0 - (1.0 + self.num_updates) ** (-2.0 / 3.0))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average the model's current weights in (the first call copies them)."""
        pairs = zip(itertools.chain(self.module.parameters(), self.module.buffers()),
                    itertools.chain(model.parameters(), model.buffers()), strict=True)
        averaged, current = [], []
        for ema_tensor, tensor in pairs:
            if self.num_updates == 0 or not ema_tensor.is_floating_point():
                ema_tensor.copy_(tensor)  # the start, and counters such as num_batches_tracked
            else:
                averaged.append(ema_tensor)
                current.append(tensor.detach())
        if averaged:
            decay = self.current_decay()
            multi_avg_fn = self.averaged.multi_avg_fn if decay == self.decay else get_ema_multi_avg_fn(decay)
            multi_avg_fn(averaged, current, None)
        self.num_updates += 1
        self.averaged.n_averaged.fill_(self.num_updates)  # a CPU tensor: no device sync

    def state_dict(self) -> dict:
        """``{"state_dict": the averaged model's state_dict, "num_updates": int}`` for the checkpoint."""
        return {"state_dict": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["state_dict"])
        self.num_updates = int(state["num_updates"])
        self.averaged.n_averaged.fill_(self.num_updates)


def model_weights(checkpoint: dict, use_ema: bool = True) -> dict:
    """The weights to predict with: the average's when the checkpoint has one (the EMA's, or once SWA has
    started the SWA average's) and ``use_ema``, else the model's."""
    if use_ema and checkpoint.get("swa"):
        return checkpoint["swa"]["state_dict"]
    if use_ema and checkpoint.get("ema"):
        return checkpoint["ema"]["state_dict"]
    return checkpoint["state_dict"]
