"""Your trainer: what one batch does. Everything around it is BaseTrainer's (base/base_trainer.py).

Edit the two hooks below, or subclass ``Trainer`` in a file of your own and name it in the config
(``"trainer": {"type": "MyTrainer"}``, exported from trainer/__init__.py). The loop that calls them keeps
the rest: moving the batch to the device, autocast and fp16 loss scaling, gradient accumulation with
DDP ``no_sync``, clipping, the optimizer, scheduler and EMA steps, exact metrics, the non-finite loss
check, logging, Ctrl-C / SIGTERM and exact resume, mid-epoch included.
"""
import torch

from base import BaseTrainer


class Trainer(BaseTrainer):
    """Supervised training: one forward pass and loss per batch, then validation.

    Useful attributes inside the hooks: ``self.model`` (the model to train, maybe wrapped for DDP),
    ``self.eval_model`` (the model to validate: the EMA weights when ``trainer.ema`` is on),
    ``self.criterion`` (the loss, as the task adapts it), ``self.task`` and ``self.device``.
    Draw randomness from torch's generators (``torch.rand``, ``torch.randperm``): their states are in
    every checkpoint, so a resumed run draws the same numbers.

    Examples:
        >>> class MixupTrainer(Trainer):
        ...     def _train_step(self, data, target):
        ...         lam, perm = 0.7, torch.randperm(len(data), device=data.device)
        ...         output = self.model(lam * data + (1 - lam) * data[perm])
        ...         loss = lam * self.criterion(output, target) + (1 - lam) * self.criterion(output, target[perm])
        ...         return loss, output
    """

    def _train_step(self, data, target) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass and the loss of one training batch: returns ``(loss, output)``.

        ``data`` and ``target`` are on the device already (MixUp / CutMix, when on, has mixed them and
        made ``target`` soft). It runs inside autocast; the loop does the backward pass, the optimizer
        step and the metrics (which read ``output``).
        """
        output = self.model(data)
        return self.criterion(output, target), output

    def _valid_step(self, data, target) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass and the loss of one validation batch: returns ``(loss, output)``.

        It runs under ``torch.inference_mode()`` and autocast; call ``self.eval_model``.
        """
        output = self.eval_model(data)
        return self.criterion(output, target), output
