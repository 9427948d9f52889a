"""``trainer.swa``: stochastic weight averaging with ``torch.optim.swa_utils``.

From the start epoch on, the learning rate follows ``SWALR`` (annealed to ``swa.lr`` over
``anneal_epochs``, each parameter group keeping its ratio to ``optimizer.args.lr``) instead of the
configured scheduler, and after each epoch's training the weights are averaged into an ``AveragedModel``
(its BatchNorm statistics too, ``use_buffers=True``), which validation scores and model_best keeps.
At the end the average's BatchNorm statistics are recomputed over the training data (``update_bn``),
and it is validated and saved as model_swa.pth. The average and SWALR's state are in every checkpoint,
so a run resumed in the middle of SWA continues it exactly.
"""
import math

import torch
from torch.optim.swa_utils import SWALR, AveragedModel

from utils.errors import ConfigError

FILE = "model_swa.pth"
NO_STEP = "swa"  # the trainer's scheduler interval during SWA: the configured scheduler no longer steps


def start_epoch(start: int | float, epochs: int) -> int:
    """The first epoch trained under SWA: ``start`` itself (an int), or after that fraction of the epochs.

    Examples:
        >>> start_epoch(0.75, 20), start_epoch(3, 6)
        (16, 3)
    """
    if isinstance(start, float):
        return max(1, math.floor(start * epochs) + 1)
    return start


class Swa:
    """The SWA state of a run: inactive until its start epoch, then the average and its scheduler.

    Examples:
        >>> swa = Swa({"start": 3, "lr": 0.0005, "anneal_epochs": 2, "anneal_strategy": "cos"}, epochs=6)
        >>> swa.begin_epoch(trainer, 3)    # builds the AveragedModel and SWALR
        >>> swa.update(trainer)            # after the epoch's training, before validation
    """

    def __init__(self, spec: dict | None, epochs: int):
        self.spec = spec
        self.start = start_epoch(spec["start"], epochs) if spec else None
        self.averaged: AveragedModel | None = None
        self.scheduler: SWALR | None = None

    def begin_epoch(self, trainer, epoch: int) -> None:
        if self.spec is not None and self.averaged is None and epoch >= self.start:
            self.start = epoch
            self._activate(trainer)

    def _activate(self, trainer) -> None:
        self.averaged = AveragedModel(trainer.raw_model, use_buffers=True)
        self.averaged.requires_grad_(False)
        optimizer, base_lr = trainer.optimizer, trainer.config["optimizer"]["args"].get("lr")
        ratios = [group.get("initial_lr", group["lr"]) / base_lr if base_lr else 1.0
                  for group in optimizer.param_groups]
        self.scheduler = SWALR(optimizer, swa_lr=[self.spec["lr"] * ratio for ratio in ratios],
                               anneal_epochs=self.spec["anneal_epochs"],
                               anneal_strategy=self.spec["anneal_strategy"])
        trainer.scheduler_interval = NO_STEP
        trainer.averaged_model = self.averaged.module

    @torch.no_grad()
    def update(self, trainer) -> None:
        """After an SWA epoch's training: average the weights in and step SWALR."""
        if self.averaged is not None:
            self.averaged.update_parameters(trainer.raw_model)
            self.scheduler.step()

    def state_dict(self) -> dict | None:
        if self.averaged is None:
            return None
        return {"start": self.start, "spec": self.spec, "n_averaged": int(self.averaged.n_averaged),
                "state_dict": self.averaged.module.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, trainer, state: dict | None) -> None:
        """Continue the SWA of a checkpoint (the optimizer already restored); SWA's settings may not change
        once it has started."""
        if state is None:
            return
        if state["spec"] != self.spec:
            raise ConfigError("trainer.swa", f"cannot change once SWA has started (at epoch {state['start']}, "
                                             f"with {state['spec']}): keep it, or start a new run")
        self.start = state["start"]
        self._activate(trainer)  # SWALR's first step leaves the restored rates as they are (it anneals from them)
        self.averaged.module.load_state_dict(state["state_dict"])
        self.averaged.n_averaged.fill_(state["n_averaged"])
        self.scheduler.load_state_dict(state["scheduler"])

    def finish(self, trainer, epoch: int) -> dict:
        """At the end of training: recompute the average's BatchNorm statistics, validate and save it."""
        from utils.recipe.averaged_eval import evaluate_average

        if self.averaged is None:
            return {}
        model = self.averaged.module
        return evaluate_average(trainer, model, epoch, trainer.run_dir / FILE,
                                {"swa_start": self.start, "swa_n_averaged": int(self.averaged.n_averaged)})
