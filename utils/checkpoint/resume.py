"""What a resumed run may change, and how a change reaches the restored optimizer and scheduler.

On ``-r``, the optimizer and the scheduler come back from the checkpoint, so a config value that
they keep (the learning rate, weight decay, momentum, a scheduler's step size...) would be silently
ignored. Here each changed value is written into the restored state, logged, and recorded in the
run's ``resume_history``. A change that would alter what the finished epochs meant (the seed, the
data, its split, the model) is refused: that is a new run, or ``--finetune``.
"""
import copy
import json
import logging
from collections import Counter
from pathlib import Path

from utils import distributed as dist
from utils.config import schema as config_schema
from utils.errors import ConfigError
from utils.recipe.schedulers import check_auto_on_resume

logger = logging.getLogger(__name__)

# dotted path (or a prefix of it) -> what it decided for the finished epochs
FIXED_ON_RESUME = {
    "seed": "the seed drew the initial weights and the order of every epoch",
    "arch": "the model's architecture",
    "dataset": "the data the finished epochs saw",
    "data_loader.type": "the loader that split the data",
    "data_loader.args.validation_split": "the split into training and validation samples",
    "data_loader.args.split_seed": "the split into training and validation samples",
    "data_loader.args.stratify": "the split into training and validation samples",
    "data_loader.args.group_split": "the split into training and validation samples",
    "lr_scheduler.type": "the scheduler whose state the checkpoint holds",
    "loss.args.teacher": "the teacher's soft labels the finished epochs learned from",
    "pseudo_labels": "the pseudo-labelled samples the finished epochs trained on",
}


def config_changes(old: dict, new: dict, prefix: str = "") -> dict[str, dict]:
    """``{dotted path: {"from": old value, "to": new value}}`` for every value that differs.

    Comments (keys starting with "_") and the resume history itself are not changes.

    Examples:
        >>> config_changes({"optimizer": {"args": {"lr": 0.1}}}, {"optimizer": {"args": {"lr": 0.01}}})
        {'optimizer.args.lr': {'from': 0.1, 'to': 0.01}}
    """
    changes = {}
    for key in [*old, *(k for k in new if k not in old)]:
        if key.startswith("_") or (not prefix and key == "resume_history"):
            continue
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changes |= config_changes(before, after, f"{prefix}{key}.")
        elif before != after:
            changes[f"{prefix}{key}"] = {"from": before, "to": after}
    return changes


def check_resume_changes(changes: dict[str, dict]) -> None:
    """Refuse a change that would make the finished epochs mean something else."""
    for path, change in changes.items():
        for fixed, what in FIXED_ON_RESUME.items():
            if path == fixed or path.startswith(fixed + "."):
                raise ConfigError(path, f"cannot change when resuming ({what}; it was "
                                        f"{json.dumps(change['from'])}, now {json.dumps(change['to'])}): start a "
                                        "new run, or one from this run's weights with --finetune RUN/model_best.pth")


def compare_configs(saved: dict, config: dict) -> dict[str, dict]:
    """The changes from a run's saved config to the new one; a change resuming cannot honour is refused."""
    try:  # today's defaults filled in, so that a key added since is not a change
        saved = config_schema.validate(copy.deepcopy(saved))
    except ConfigError:
        pass
    changes = config_changes(saved, config)
    check_resume_changes(changes)
    check_auto_on_resume(changes, config["lr_scheduler"])
    return changes


class ResumePoint:
    """A checkpoint to continue a run from: read and verified once, its config compared with the new
    config, and its parts handed out.

    Examples:
        >>> point = ResumePoint.read("saved/Digits_ResNet/20261127_101500")
        >>> point.compare(config.config)     # refuses a change of the seed, the data, the model...
        >>> point["optimizer"]               # a part of the checkpoint
        >>> point.own("rng_states")          # this process's entry of what every process saved
    """

    def __init__(self, path: Path, checkpoint: dict):
        self.path, self.checkpoint = path, checkpoint
        self.changes: dict[str, dict] = {}

    @classmethod
    def read(cls, target: str | Path) -> "ResumePoint":
        """The checkpoint file ``target``, or the newest one of a run directory that verifies."""
        from utils.checkpoint.files import read_resume_checkpoint

        return cls(*read_resume_checkpoint(target))

    def compare(self, config: dict) -> dict[str, dict]:
        """Find the changes of ``config`` since the checkpoint, refusing those resuming cannot honour."""
        self.changes = compare_configs(self.checkpoint["config"], config)
        return self.changes

    def __getitem__(self, key: str):
        return self.checkpoint[key]

    def get(self, key: str, default=None):
        return self.checkpoint.get(key, default)

    def own(self, key: str):
        """This process's entry of a part saved once per process (RNG states, a half-done epoch's totals)."""
        value = self.checkpoint[key]
        return dist.own_entry(value) if isinstance(value, list) else value

    def apply_changes(self, config, optimizer, lr_scheduler) -> None:
        """Write the changed values into the restored optimizer and scheduler, log each change and
        add it to the run's ``resume_history`` (written to config.json once a checkpoint holds it)."""
        epoch = self.checkpoint["epoch"] + 1
        changes = self.changes
        for path, change in changes.items():
            section, _, key = path.partition(".args.")
            if section == "optimizer" and key and "." not in key and "optimizer.type" not in changes:
                # The optimizer was built from the new config: its defaults hold the new value.
                _set_optimizer_arg(optimizer, lr_scheduler, key, optimizer.defaults.get(key, change["to"]))
            elif section == "lr_scheduler" and key and "." not in key and lr_scheduler is not None:
                _set_scheduler_arg(lr_scheduler, key, change["to"], path)
            logger.info("%s changed at epoch %d: %s -> %s", path, epoch, json.dumps(change["from"]),
                        json.dumps(change["to"]))
        if changes:
            config.record_resume(epoch, changes)


def _set_optimizer_arg(optimizer, lr_scheduler, key: str, value) -> None:
    groups = optimizer.param_groups
    if any(key not in group for group in groups):
        raise ConfigError(f"optimizer.args.{key}", f"{type(optimizer).__name__} keeps no {key!r} to change")
    if key != "lr":
        for group in groups:
            group[key] = tuple(value) if isinstance(group[key], tuple) else value
        return
    # The first group gets the new learning rate; the others keep their ratio to it.
    for name in ("lr", "initial_lr"):
        if name in groups[0]:
            first = groups[0][name]
            for group in groups:
                group[name] = value * group[name] / first if first else value
    if lr_scheduler is not None:
        for name in ("base_lrs", "_last_lr"):
            values = getattr(lr_scheduler, name, None)
            if values:
                setattr(lr_scheduler, name, [value * v / values[0] if values[0] else value for v in values])


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
