"""The learning-rate range test (``python train.py -c config.json --lr-find``).

The rate rises exponentially from ``lr_min`` to ``lr_max`` over ``steps`` optimizer steps on the
training data, every parameter group's rate scaled together (their ratios kept); the loss of each step
(averaged over the accumulated batches and over the processes under torchrun) is smoothed by an
exponential moving average with bias correction, and the test stops early once the smoothed loss
exceeds ``diverge`` times its best. The suggestion is the rate of the steepest descent of the smoothed
loss against log10(lr). The model, the optimizer and the AMP scaler are put back as they were.
"""
import contextlib
import copy
import math
from dataclasses import dataclass, field
from itertools import count

import torch

from utils import distributed as dist
from utils.recipe.freezing import rewrap_ddp
from utils.util import autocast

RULE = "steepest descent of the smoothed loss"


@dataclass
class LrFindResult:
    """The curve (``lrs``, ``losses``, ``smoothed``, one per step) and the suggested rate."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None
    rule: str = RULE
    stopped_early: bool = False


def lr_at(step: int, steps: int, lr_min: float, lr_max: float) -> float:
    """The exponential ramp: ``lr_min`` at step 0, ``lr_max`` at step ``steps - 1``.

    Examples:
        >>> lr_at(0, 3, 1e-4, 1e-2), lr_at(1, 3, 1e-4, 1e-2)
        (0.0001, 0.001)
    """
    return lr_min * (lr_max / lr_min) ** (step / max(1, steps - 1))


def steepest_descent(lrs: list[float], smoothed: list[float], skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """The rate where the smoothed loss falls fastest against log10(lr), leaving out the first
    ``skip_begin`` points (the average is still settling) and the last ``skip_end`` (diverging)."""
    import numpy as np

    if len(lrs) < 3:
        return None
    begin = min(skip_begin, max(0, len(lrs) - skip_end - 3))
    xs, ys = np.log10(lrs[begin : len(lrs) - skip_end]), np.asarray(smoothed[begin : len(lrs) - skip_end])
    return float(lrs[begin + int(np.argmin(np.gradient(ys, xs)))])


def _batches(loader):
    """The training batches, the loader's epochs one after the other."""
    for epoch in count(1):
        loader.set_epoch(epoch)
        yield from loader


def lr_range_test(trainer, lr_min: float = 1e-7, lr_max: float = 10.0, steps: int = 100, beta: float = 0.98,
                  diverge: float = 4.0) -> LrFindResult:
    """Run the range test with a built trainer's model, optimizer, loss, accumulation, AMP and DDP.

    Examples:
        >>> result = lr_range_test(trainer, lr_min=1e-6, lr_max=1.0, steps=100)
        >>> result.suggestion
        0.00316
    """
    if trainer.freezer.set_epoch(1):  # as epoch 1 trains: a backbone frozen for the first epochs is frozen
        trainer.model = rewrap_ddp(trainer.model)
    model, optimizer, scaler = trainer.model, trainer.optimizer, trainer.scaler
    saved = (copy.deepcopy(trainer.raw_model.state_dict()), copy.deepcopy(optimizer.state_dict()), scaler.state_dict())
    base = trainer.config["optimizer"]["args"].get("lr") or optimizer.param_groups[0].get("initial_lr")
    ratios = [group.get("initial_lr", group["lr"]) / base for group in optimizer.param_groups]
    result, average, best = LrFindResult(), 0.0, math.inf
    batches = _batches(trainer.data_loader)
    model.train()
    trainer.freezer.freeze_norms()
    try:
        for step in range(steps):
            lr = lr_at(step, steps, lr_min, lr_max)
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            loss = _step(trainer, model, batches, step)
            average = beta * average + (1 - beta) * loss
            smoothed = average / (1 - beta ** (step + 1))
            result.lrs.append(lr), result.losses.append(loss), result.smoothed.append(smoothed)
            if not math.isfinite(smoothed) or smoothed > diverge * best:
                result.stopped_early = True
                break
            best = min(best, smoothed)
    finally:
        trainer.raw_model.load_state_dict(saved[0])
        optimizer.load_state_dict(saved[1])
        scaler.load_state_dict(saved[2])
        optimizer.zero_grad(set_to_none=True)
    result.suggestion = dist.broadcast_object(steepest_descent(result.lrs, result.smoothed))
    return result


def _step(trainer, model, batches, step: int) -> float:
    """One optimizer step over ``grad_accum_steps`` batches; its mean loss over them and the processes."""
    accum, total = trainer.accum_steps, 0.0
    for micro in range(accum):
        data, target = trainer._to_device(*next(batches))
        inputs, step_target = trainer.mixup(data, target, 1, step) if trainer.mixup else (data, target)
        sync = micro == accum - 1 or not isinstance(model, torch.nn.parallel.DistributedDataParallel)
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast(trainer.device, trainer.amp_dtype):
                loss, _ = trainer._train_step(inputs, step_target)
            trainer.scaler.scale(loss / accum).backward()
        total = total + loss.detach().float()
    if trainer.grad_clip_norm is not None:
        trainer.scaler.unscale_(trainer.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip_norm)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)
    mean = dist.all_reduce_sum(torch.as_tensor(total / accum, dtype=torch.float64, device=trainer.device).clone())
    return float(mean) / dist.get_world_size()  # a host sync each step: the test must see divergence at once
