"""The learning-rate scheduler of a config: any torch scheduler, nested ones, and a linear warmup in front.

    "lr_scheduler": {"type": "CosineAnnealingLR", "args": {"T_max": 28}, "interval": "epoch",
                     "warmup": {"epochs": 2, "start_factor": 0.01}}

is ``SequentialLR([LinearLR(start_factor=0.01, total_iters=2), CosineAnnealingLR(T_max=28)],
milestones=[2])``: the schedule after the warmup starts from step 0 at the warmup's end. With
``"interval": "step"`` every count is in optimizer steps (not batches), so the curve is the same for any
gradient accumulation or number of processes at the same global batch; ``{"epochs": N}`` then means
N epochs' worth of optimizer steps.
"""
import torch
from torch.optim import lr_scheduler as schedulers

from utils.config.components import call, lookup_type, section_module


def build_scheduler(spec: dict, optimizer: torch.optim.Optimizer, where: str = "lr_scheduler"):
    """One scheduler from ``{type, args}``; ``args.schedulers`` (SequentialLR, ChainedScheduler) are built too.

    Examples:
        >>> build_scheduler({"type": "SequentialLR", "args": {"milestones": [5], "schedulers": [
        ...     {"type": "ConstantLR", "args": {"factor": 0.5, "total_iters": 5}},
        ...     {"type": "ExponentialLR", "args": {"gamma": 0.9}}]}}, optimizer)
    """
    scheduler_class = lookup_type(section_module("lr_scheduler"), spec["type"], f"{where}.type")
    args = dict(spec.get("args", {}))
    if "schedulers" in args:
        args["schedulers"] = [build_scheduler(inner, optimizer, f"{where}.args.schedulers.{i}")
                              for i, inner in enumerate(args["schedulers"])]
    if scheduler_class is schedulers.ChainedScheduler:  # it takes the schedulers first, the optimizer after
        return call(scheduler_class, where, optimizer=optimizer, **args)
    return call(scheduler_class, where, optimizer, **args)


def build_lr_scheduler(config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The config's ``lr_scheduler`` section (None without one), with its warmup in front.

    ``steps_per_epoch`` is the number of optimizer steps of an epoch on one process: it converts
    ``warmup.epochs`` to steps when the scheduler steps every optimizer step.
    """
    spec = config["lr_scheduler"]
    if spec is None:
        return None
    main = build_scheduler(spec, optimizer)
    warmup = spec.get("warmup")
    if not warmup:
        return main
    if warmup.get("steps") is not None:
        length = warmup["steps"]
    else:
        length = warmup["epochs"] * (steps_per_epoch if spec.get("interval", "epoch") == "step" else 1)
    linear = schedulers.LinearLR(optimizer, start_factor=warmup.get("start_factor", 0.01), total_iters=length)
    if isinstance(main, schedulers.SequentialLR):  # SequentialLR cannot hold one: join the two sequences
        milestones = [length] + [length + milestone for milestone in main._milestones]
        return schedulers.SequentialLR(optimizer, [linear, *main._schedulers], milestones=milestones)
    return schedulers.SequentialLR(optimizer, [linear, main], milestones=[length])


def step_epoch_scheduler(lr_scheduler, interval: str, log: dict, monitor_key: str | None) -> None:
    """Step an epoch-interval scheduler after the epoch (ReduceLROnPlateau with the monitored value)."""
    if lr_scheduler is None or interval != "epoch":
        return
    if isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        lr_scheduler.step(log[monitor_key or "loss"])
    else:
        lr_scheduler.step()
