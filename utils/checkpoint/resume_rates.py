"""How the changes of a resumed run reach the restored optimizer and scheduler (see resume.py for what
may change): every parameter group gets the new config's options, and the new config's scheduler is
built and stepped over the finished epochs; a scheduler whose state cannot be worked out again
(ReduceLROnPlateau, SWALR) keeps it and takes the new arguments."""
import warnings
from collections import Counter

from utils.errors import ConfigError

REFUSAL = "start a new run, or one from this run's weights with --finetune RUN/model_best.pth"


def group_options(optimizer) -> list[dict]:
    """Every parameter group's options (all but its tensors): what the config built, before a resume
    loads the checkpoint's state over them."""
    return [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]


def check_group_layout(optimizer, saved_state: dict) -> None:
    """The optimizer state of the checkpoint fits only groups holding as many tensors as its own."""
    saved = [len(group["params"]) for group in saved_state["param_groups"]]
    built = [len(group["params"]) for group in optimizer.param_groups]
    if saved != built:
        raise ConfigError("optimizer.param_groups", f"cannot change when resuming (the checkpoint's optimizer state "
                                                    f"is for {len(saved)} groups of {saved} tensors, the config makes "
                                                    f"{len(built)} of {built}): {REFUSAL}")


def replay_schedule(config, optimizer, new_groups: list[dict], steps: int, steps_per_epoch: int):
    """Give every group the new config's options, then build the new config's scheduler (None without
    one) and step it ``steps`` times: the rates are those a new run would have after as many steps."""
    from utils.recipe.schedulers import build_lr_scheduler

    for group, new in zip(optimizer.param_groups, new_groups):
        group.update({key: value for key, value in new.items() if key not in ("lr", "initial_lr")})
        group["lr"] = new.get("initial_lr", new["lr"])  # the group's rate before any scheduler scaled it
        group.pop("initial_lr", None)  # a scheduler built now starts from "lr", as in a new run
    lr_scheduler = build_lr_scheduler(config, optimizer, steps_per_epoch)
    if lr_scheduler is not None:
        with warnings.catch_warnings():  # torch warns of a scheduler step before any optimizer step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps):
                lr_scheduler.step()
    return lr_scheduler


def apply_to_restored(optimizer, lr_scheduler, new_groups: list[dict], changes: dict) -> None:
    """A restored scheduler that keeps its state (ReduceLROnPlateau's reductions, or SWALR once SWA has
    started): the groups get the new options (and, when a rate changed, the new rate from the resumed
    epoch on), the scheduler its new arguments."""
    groups = changes.get("optimizer.param_groups", {})
    group_rates = [[entry.get("lr") if isinstance(entry, dict) else None for entry in groups.get(side) or []]
                   for side in ("from", "to")]
    rates_changed = "optimizer.args.lr" in changes or "optimizer.layer_decay" in changes or \
        group_rates[0] != group_rates[1]
    for group, new in zip(optimizer.param_groups, new_groups):
        group.update({key: value for key, value in new.items() if key != "lr" or rates_changed})
    for path, change in changes.items():
        section, _, key = path.partition(".args.")
        if section == "lr_scheduler" and key and "." not in key and lr_scheduler is not None:
            _set_scheduler_arg(lr_scheduler, key, change["to"], path)
    if lr_scheduler is not None and rates_changed:
        lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _set_scheduler_arg(lr_scheduler, key: str, value, path: str) -> None:
    name = {"min_lr": "min_lrs"}.get(key, key)  # ReduceLROnPlateau keeps one per parameter group
    current = getattr(lr_scheduler, name, None)
    if current is None and not hasattr(lr_scheduler, name) or callable(current):
        raise ConfigError(path, f"{type(lr_scheduler).__name__} keeps no {key!r} that can change on resume: "
                                "start a new run, or one from this run's weights with --finetune")
    if isinstance(current, Counter):
        value = Counter(value)
    elif isinstance(current, list) and not isinstance(value, list):
        value = [value] * len(current)
    setattr(lr_scheduler, name, value)
    if key in ("mode", "threshold", "threshold_mode") and hasattr(lr_scheduler, "_init_is_better"):
        lr_scheduler._init_is_better(mode=lr_scheduler.mode, threshold=lr_scheduler.threshold,
                                     threshold_mode=lr_scheduler.threshold_mode)
