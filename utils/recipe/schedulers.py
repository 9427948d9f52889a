"""The learning-rate scheduler of a config: any torch scheduler, nested ones, and a linear warmup in front.

    "lr_scheduler": {"type": "CosineAnnealingLR", "args": {"T_max": 28}, "interval": "epoch",
                     "warmup": {"epochs": 2, "start_factor": 0.01}}

is ``SequentialLR([LinearLR(start_factor=0.01, total_iters=2), CosineAnnealingLR(T_max=28)],
milestones=[2])``: the schedule after the warmup starts from step 0 at the warmup's end. With
``"interval": "step"`` every count is in optimizer steps (not batches), so the curve is the same for any
gradient accumulation or number of processes at the same global batch; ``{"epochs": N}`` then means
N epochs' worth of optimizer steps.
"""
import logging

import torch
from torch.optim import lr_scheduler as schedulers

from utils.config.components import call, lookup_type, section_module
from utils.errors import ConfigError

logger = logging.getLogger("trainer")
# The argument that sets a scheduler's length, where "auto" computes it from the run.
AUTO_LENGTH = {"CosineAnnealingLR": "T_max", "OneCycleLR": "total_steps"}


def auto_length_key(spec: dict | None) -> str | None:
    """The argument of the top-level scheduler given as "auto" (T_max, total_steps), or None."""
    if not spec:
        return None
    key = AUTO_LENGTH.get(spec.get("type"))
    return key if key is not None and spec.get("args", {}).get(key) == "auto" else None


def check_auto_on_resume(changes: dict[str, dict], spec: dict | None) -> None:
    """On resume, the restored scheduler keeps the length "auto" gave it when the run started. Changing
    ``trainer.epochs`` alone would leave the schedule at the old length unnoticed: refused, as is
    turning a number into "auto"; give the new length as a number instead."""
    key = auto_length_key(spec)
    if key is not None and "trainer.epochs" in changes and f"lr_scheduler.args.{key}" not in changes:
        raise ConfigError("trainer.epochs", f"cannot change when resuming while lr_scheduler.args.{key} is "
                                            "'auto' (the schedule's length came from the epochs the run started "
                                            f"with): also give its new length, e.g. lr_scheduler.args.{key}=N")
    for path, change in changes.items():
        if path.startswith("lr_scheduler.args.") and change["to"] == "auto":
            raise ConfigError(path, "cannot become 'auto' when resuming: give the length as a number")


def schedule_length(spec: dict, epochs: int, steps_per_epoch: int, warmup_length: int) -> int:
    """The length "auto" stands for: the epochs (or, stepping every optimizer step, the steps) after the warmup."""
    total = epochs * (steps_per_epoch if spec.get("interval", "epoch") == "step" else 1)
    if total - warmup_length < 1:
        raise ConfigError(f"lr_scheduler.args.{auto_length_key(spec)}",
                          f"'auto' leaves no steps after the warmup ({warmup_length} of {total})")
    return total - warmup_length


def build_scheduler(spec: dict, optimizer: torch.optim.Optimizer, where: str = "lr_scheduler"):
    """One scheduler from ``{type, args}``; ``args.schedulers`` (SequentialLR, ChainedScheduler) are built too.

    Examples:
        >>> build_scheduler({"type": "SequentialLR", "args": {"milestones": [5], "schedulers": [
        ...     {"type": "ConstantLR", "args": {"factor": 0.5, "total_iters": 5}},
        ...     {"type": "ExponentialLR", "args": {"gamma": 0.9}}]}}, optimizer)
    """
    scheduler_class = lookup_type(section_module("lr_scheduler"), spec["type"], f"{where}.type")
    args = dict(spec.get("args", {}))
    for key, value in args.items():
        if value == "auto":
            raise ConfigError(f"{where}.args.{key}", "'auto' is known only for the top-level scheduler's length: "
                                                     "CosineAnnealingLR's T_max, OneCycleLR's total_steps")
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
    warmup = spec.get("warmup")
    length = 0
    if warmup and warmup.get("steps") is not None:
        length = warmup["steps"]
    elif warmup:
        length = warmup["epochs"] * (steps_per_epoch if spec.get("interval", "epoch") == "step" else 1)
    auto_key = auto_length_key(spec)
    if auto_key is not None:
        value = schedule_length(spec, config["trainer"]["epochs"], steps_per_epoch, length)
        logger.info("lr_scheduler.args.%s: auto = %d (%s)", auto_key, value,
                    "optimizer steps" if spec.get("interval", "epoch") == "step" else "epochs")
        spec = spec | {"args": spec["args"] | {auto_key: value}}
    main = build_scheduler(spec, optimizer)
    if not warmup:
        return main
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
