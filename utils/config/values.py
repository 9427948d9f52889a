"""The values the template consumes itself, checked with the config: one ``error:`` line each.

The schema (schema.py) knows the config's own keys. Here are the arguments of the components the
template builds or reads itself (the optimizer's options, also in each parameter group, the
loader's batch), class weights and thresholds, and the rules that need two settings together or the
task (a balanced sampler on values, MixUp on labels that are not one class per sample).
"""
import math
import re

from utils.config.fields import NONE, Field, check_value, fraction, non_negative, one_of, positive
from utils.errors import ConfigError


def _probability_below_one(value):
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _betas(value):
    if len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1
                               for v in value):
        return None
    return "must be two numbers in [0, 1), e.g. [0.9, 0.999]"


def _none_or_positive(value):
    return None if value is None else positive(value)


# Optimizer options, in optimizer.args and in every entry of optimizer.param_groups.
OPTIMIZER_OPTIONS = {
    "lr": Field((float,), None, non_negative),
    "weight_decay": Field((float,), None, non_negative),
    "momentum": Field((float,), None, _probability_below_one),
    "dampening": Field((float,), None, fraction),
    "eps": Field((float,), None, non_negative),
    "betas": Field((list,), None, _betas),
}
LOADER_ARGS = {
    "batch_size": Field((int,), None, positive),
    "num_workers": Field((int,), None, non_negative),
    "sampler": Field((str, NONE), None, one_of(None, "balanced")),
    "samples_per_epoch": Field((int, NONE), None, _none_or_positive),
}
WEIGHT_ARGS = ("class_weights", "pos_weight", "alpha", "weight")  # loss arguments: one weight per class or label


def check_values(config: dict) -> None:
    """The component arguments the template reads itself, and the parameter groups.

    Examples:
        >>> check_values(config)    # ConfigError: optimizer.param_groups.0.lr: must be 0 or more, got -0.01
    """
    _check_args("optimizer.args", config["optimizer"].get("args", {}), OPTIMIZER_OPTIONS)
    _check_args("data_loader.args", config["data_loader"].get("args", {}), LOADER_ARGS)
    if config["inference"]["data_loader"] is not None:
        _check_args("inference.data_loader.args", config["inference"]["data_loader"].get("args", {}), LOADER_ARGS)
    names = set()
    for i, entry in enumerate(config["optimizer"]["param_groups"]):
        check_param_group(f"optimizer.param_groups.{i}", entry)
        name = str(entry.get("name", i))
        if name in names or name == "default":
            raise ConfigError(f"optimizer.param_groups.{i}.name", f"{name!r} names another group (the "
                                                                  "parameters no entry matches are \"default\"): "
                                                                  "give each its own")
        names.add(name)
    scheduler = config["lr_scheduler"]
    if scheduler is not None and scheduler["type"] == "ReduceLROnPlateau" and scheduler["interval"] == "step":
        raise ConfigError("lr_scheduler.interval", "ReduceLROnPlateau steps on the monitored value, which exists "
                                                   "once an epoch: use \"epoch\"")
    tune = config["tune"]
    if tune["grace_period"] is not None and tune["grace_period"] <= tune["heartbeat_interval"]:
        raise ConfigError("tune.grace_period", f"{tune['grace_period']} s is not longer than "
                                               f"tune.heartbeat_interval ({tune['heartbeat_interval']} s): the trial "
                                               "of a live worker would be taken for dead and run again")


def _check_args(where: str, args: dict, fields: dict) -> None:
    for key, field in fields.items():
        if key in args:
            check_value(f"{where}.{key}", args[key], field)


def check_param_group(where: str, entry) -> None:
    """One entry of ``optimizer.param_groups``: a regex ``match``, a ``name``, and optimizer options."""
    if not isinstance(entry, dict) or not isinstance(entry.get("match"), str):
        raise ConfigError(where, f'must be {{"match": REGEX, "name": NAME, "lr": ...}}, got {entry!r}')
    try:
        re.compile(entry["match"])
    except re.error as error:
        raise ConfigError(f"{where}.match", f"not a regular expression: {error}") from None
    if "name" in entry:
        check_value(f"{where}.name", entry["name"], Field((str, int)))
    _check_args(where, entry, OPTIMIZER_OPTIONS)
    for key, value in entry.items():
        if key not in ("match", "name") and not key.startswith("_") and not isinstance(value, (int, float, list)):
            raise ConfigError(f"{where}.{key}", f"an optimizer option is a number, true/false or a list, got {value!r}")


def check_with_task(config: dict, task) -> None:
    """The rules that need the task or several settings together.

    Examples:
        >>> check_with_task(config, task)   # ConfigError: data_loader.args.sampler: 'balanced' needs classes...
    """
    kind = getattr(task, "target_kind", "class")
    num_classes = config["arch"].get("args", {}).get("num_classes")
    num_classes = num_classes if isinstance(num_classes, int) and not isinstance(num_classes, bool) else None
    if config["data_loader"].get("args", {}).get("sampler") == "balanced" and kind == "value":
        raise ConfigError("data_loader.args.sampler", f"'balanced' draws every class equally often, but the "
                                                      f"targets of {type(task).__name__} are values, not classes; "
                                                      "remove it")
    if config["trainer"]["mixup"] is not None and kind != "class":
        raise ConfigError("trainer.mixup", f"mixes one class index per sample into class probabilities, but "
                                           f"{type(task).__name__} has targets of another kind ({kind}); remove it")
    thresholds = getattr(task, "thresholds", None)
    if isinstance(thresholds, list) and num_classes is not None and len(thresholds) != num_classes:
        raise ConfigError("task.args.thresholds", f"has {len(thresholds)} values, but arch.args.num_classes is "
                                                  f"{num_classes} (one threshold per label)")
    check_class_weights(config, num_classes if kind in ("class", "labels") else None)
    for i, entry in enumerate(config["metrics"]):
        threshold = entry.get("args", {}).get("threshold") if isinstance(entry, dict) else None
        values = threshold if isinstance(threshold, list) else [threshold]
        if threshold is not None and not all(_is_number(v) and 0 <= v <= 1 for v in values):
            raise ConfigError(f"metrics.{i}.args.threshold", f"must be a probability in [0, 1] or a list of them, "
                                                             f"got {threshold!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_class_weights(config: dict, num_classes: int | None) -> None:
    """Weights of the loss per class or label: numbers, 0 or more, not all 0, one per class."""
    spec = config["loss"]
    args = {} if isinstance(spec, str) else spec.get("args", {})
    for name in WEIGHT_ARGS:
        value = args.get(name)
        where = f"loss.args.{name}"
        if value is None or value == "balanced":
            continue
        if _is_number(value):  # one weight for all (focal loss's alpha, a custom loss's weight)
            if value < 0:
                raise ConfigError(where, f"must be 0 or more (a negative weight drives the loss below 0), got "
                                         f"{value!r}")
            continue
        if not isinstance(value, list) or not value:
            raise ConfigError(where, f"must be a list of numbers (one per class) or 'balanced', got {value!r}")
        for i, weight in enumerate(value):
            if not _is_number(weight) or weight < 0:
                raise ConfigError(where, f"entry {i} must be a number, 0 or more (a negative weight drives the "
                                         f"loss below 0), got {weight!r}")
        if not any(value):
            raise ConfigError(where, "are all 0: nothing would be learned")
        if num_classes is not None and len(value) != num_classes:
            raise ConfigError(where, f"has {len(value)} weights, but arch.args.num_classes is {num_classes}")
