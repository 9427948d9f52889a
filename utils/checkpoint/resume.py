"""What a resumed run may change, and how a change reaches the restored optimizer and scheduler.

On ``-r``, the optimizer and the scheduler come back from the checkpoint, so a config value that
they keep (a learning rate, a group's options, weight decay, the scheduler and its warmup) would be
silently ignored. A change of them is applied exactly: every parameter group gets the options of
the new config, and the new scheduler is built and stepped as often as the finished epochs (or
optimizer steps) stepped the old one, so the rates are those a new run with the new config would
have from the resumed epoch on. Each change is logged and recorded in the run's ``resume_history``.
A change that would alter what the finished epochs meant, or that cannot be applied exactly (the
seed, the data, its split, the model, the task, the optimizer's type, which tensors each parameter
group holds, a ReduceLROnPlateau's past reductions), is refused: that is a new run, or ``--finetune``.
"""
import copy
import json
import logging
from pathlib import Path

from utils import distributed as dist
from utils.checkpoint.resume_rates import REFUSAL, apply_to_restored, replay_schedule
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
    "loss.args.teacher": "the teacher's soft labels the finished epochs learned from",
    "pseudo_labels": "the pseudo-labelled samples the finished epochs trained on",
    "task.type": "what the targets mean, which the model's outputs were trained for",
    "task.args.heads": "the heads the model's outputs were trained for",
    "optimizer.type": "the optimizer whose state (momentum, moment estimates) the checkpoint holds",
    "optimizer.no_decay_norm_and_bias": "which tensors get weight decay, that is the parameter groups whose "
                                        "state the checkpoint holds",
}
PLATEAU = "ReduceLROnPlateau"
RATE_PATHS = ("optimizer.args.lr", "optimizer.param_groups", "optimizer.layer_decay", "lr_scheduler")


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


def check_resume_changes(changes: dict[str, dict], old: dict | None = None, new: dict | None = None) -> None:
    """Refuse a change that would make the finished epochs mean something else, or that the restored
    optimizer and scheduler cannot take exactly (``old`` and ``new``: the two configs)."""
    for path, change in changes.items():
        for fixed, what in FIXED_ON_RESUME.items():
            if path == fixed or path.startswith(fixed + "."):
                raise ConfigError(path, f"cannot change when resuming ({what}; it was "
                                        f"{json.dumps(change['from'])}, now {json.dumps(change['to'])}): {REFUSAL}")
    if old is not None and new is not None:
        _check_group_changes(changes, new["optimizer"].get("no_decay_norm_and_bias", True), _default_decay(new))
        _check_scheduler_change(old, new)


def _refuse(path: str, why: str) -> None:
    raise ConfigError(path, f"cannot change when resuming ({why}): {REFUSAL}")


def _default_decay(config: dict) -> float:
    """The weight decay of the config's optimizer when its args give none (AdamW: 0.01, most others: 0)."""
    import inspect

    from utils.config.components import lookup_type, section_module

    try:
        optimizer_class = lookup_type(section_module("optimizer"), config["optimizer"]["type"], "optimizer.type")
        default = inspect.signature(optimizer_class).parameters["weight_decay"].default
    except (ConfigError, KeyError, TypeError, ValueError):
        return 0.0
    return default if isinstance(default, (int, float)) else 0.0


def _or(value, default):
    return default if value is None else value


def _check_group_changes(changes: dict[str, dict], no_decay_norm_and_bias: bool, default_decay: float) -> None:
    """The parameter groups' options may change; which tensors each group holds may not (the optimizer
    state the checkpoint holds is per group). With ``no_decay_norm_and_bias``, turning weight decay on
    or off moves biases and norms into groups of their own."""
    layer_decay = changes.get("optimizer.layer_decay")
    if layer_decay and (layer_decay["from"] is None or layer_decay["to"] is None):
        _refuse("optimizer.layer_decay", "turning layer decay on or off splits or joins the parameter groups "
                                         "whose optimizer state the checkpoint holds; its value may change")
    decay = changes.get("optimizer.args.weight_decay")
    if decay and no_decay_norm_and_bias and bool(_or(decay["from"], default_decay)) != bool(
            _or(decay["to"], default_decay)):
        _refuse("optimizer.args.weight_decay", "turning weight decay on or off splits or joins the parameter "
                                               "groups (biases and norms get none); a non-zero value may change")
    groups = changes.get("optimizer.param_groups")
    if not groups:
        return
    before, after = groups["from"] or [], groups["to"] or []
    if len(before) != len(after):
        _refuse("optimizer.param_groups", f"{len(before)} groups became {len(after)}: the tensors of each group "
                                          "and their optimizer state are fixed; a group's options may change")
    for i, (old, new) in enumerate(zip(before, after)):
        for key in ("match", "name"):
            if isinstance(old, dict) and isinstance(new, dict) and old.get(key) != new.get(key):
                _refuse(f"optimizer.param_groups.{i}.{key}", "it decides which tensors the group and its "
                                                             "optimizer state hold; its lr and options may change")
        switched = isinstance(old, dict) and isinstance(new, dict) and "weight_decay" in {*old, *new} and \
            bool(old.get("weight_decay", 1)) != bool(new.get("weight_decay", 1))
        if no_decay_norm_and_bias and switched:
            _refuse(f"optimizer.param_groups.{i}.weight_decay", "turning weight decay on or off splits or joins "
                                                                "the parameter groups")


def _scheduler_type(config: dict) -> str | None:
    return (config.get("lr_scheduler") or {}).get("type")


def _check_scheduler_change(old: dict, new: dict) -> None:
    """Any scheduler can be replayed over the finished epochs except ReduceLROnPlateau, whose reductions
    followed the validation values: it may not be added, removed or replaced."""
    before, after = _scheduler_type(old), _scheduler_type(new)
    if before != after and PLATEAU in (before, after):
        _refuse("lr_scheduler", f"it was {before or 'none'}, now {after or 'none'}; the past reductions of a "
                                f"{PLATEAU} followed the validation values and cannot be worked out again")


def compare_configs(saved: dict, config: dict) -> dict[str, dict]:
    """The changes from a run's saved config to the new one; a change resuming cannot honour is refused."""
    try:  # today's defaults filled in, so that a key added since is not a change
        saved = config_schema.validate(copy.deepcopy(saved))
    except ConfigError:
        pass
    changes = config_changes(saved, config)
    check_resume_changes(changes, saved, config)
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
        swa = self.checkpoint.get("swa")
        for path in self.changes:
            if swa and path.startswith(RATE_PATHS):  # SWALR, not the config's schedule, sets the rates now
                _refuse(path, f"SWA started at epoch {swa['start']}: from then on its SWALR sets the rates")
        return self.changes

    def __getitem__(self, key: str):
        return self.checkpoint[key]

    def get(self, key: str, default=None):
        return self.checkpoint.get(key, default)

    def own(self, key: str):
        """This process's entry of a part saved once per process (RNG states, a half-done epoch's totals)."""
        value = self.checkpoint[key]
        return dist.own_entry(value) if isinstance(value, list) else value

    def replays_schedule(self, config: dict) -> bool:
        """Whether the optimizer or the scheduler changed and the new config's scheduler is built anew and
        stepped over the finished epochs (so the checkpoint's scheduler state is not loaded): always,
        except for ReduceLROnPlateau, whose state is its reductions, and once SWA has started."""
        changed = any(path.startswith(("optimizer", "lr_scheduler")) for path in self.changes)
        return changed and _scheduler_type(config) != PLATEAU and not self.checkpoint.get("swa")

    def apply_changes(self, config, optimizer, lr_scheduler, new_groups: list[dict] | None = None,
                      steps_per_epoch: int = 1):
        """Apply the changes to the restored optimizer and scheduler, log each change and add it to the
        run's ``resume_history`` (written to config.json once a checkpoint holds it). Returns the
        scheduler to train with: the restored one, or the new config's, stepped to the resumed point.

        ``new_groups`` are the parameter groups' options as the new config built them (before the
        checkpoint's state was loaded); ``steps_per_epoch`` converts a warmup in epochs to steps.

        Examples:
            >>> trainer.lr_scheduler = point.apply_changes(config, optimizer, lr_scheduler, new_groups, 12)
        """
        epoch = self.checkpoint["epoch"] + 1
        changes = self.changes
        if new_groups is not None and any(path.startswith(("optimizer", "lr_scheduler")) for path in changes):
            if not self.replays_schedule(config.config):
                apply_to_restored(optimizer, lr_scheduler, new_groups, changes)
            else:
                steps = self.checkpoint["global_step"] if (config["lr_scheduler"] or {}).get("interval") == "step" \
                    else self.checkpoint["epoch"]
                lr_scheduler = replay_schedule(config, optimizer, new_groups, steps, steps_per_epoch)
        for path, change in changes.items():
            logger.info("%s changed at epoch %d: %s -> %s", path, epoch, json.dumps(change["from"]),
                        json.dumps(change["to"]))
        if changes:
            config.record_resume(epoch, changes)
        return lr_scheduler
