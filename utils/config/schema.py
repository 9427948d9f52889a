"""What a config may hold: every known key, its type, its default and its range.

``validate(config)`` checks a config against this schema before anything is built and returns it
with the defaults filled in. Keys that start with "_" are comments and are ignored.
"""
import difflib
from dataclasses import dataclass
from typing import Any

from utils.errors import ConfigError

REQUIRED = object()
COMPONENT_SECTIONS = ("arch", "dataset", "data_loader", "optimizer")


@dataclass(frozen=True)
class Field:
    """One config key: the JSON types it accepts, its default, and an optional range check."""

    types: tuple
    default: Any = REQUIRED
    check: Any = None  # value -> a description of the problem, or None


def _positive(value):
    return None if value > 0 else "must be positive"


def _non_negative(value):
    return None if value >= 0 else "must be 0 or more"


def _fraction(value):
    return None if 0 <= value <= 1 else "must be between 0 and 1"


def _one_of(*choices):
    return lambda value: None if value in choices else f"must be one of {', '.join(map(repr, choices))}"


def _monitor(value):
    parts = value.split()
    if value == "off" or (len(parts) == 2 and parts[0] in ("min", "max")):
        return None
    return "must be 'off', 'min <metric>' or 'max <metric>', e.g. 'max val_accuracy'"


def _history(value):
    if all(isinstance(entry, dict) and isinstance(entry.get("changes"), dict) for entry in value):
        return None
    return 'must be a list of {"epoch": N, "changes": {...}}, as resuming writes it'


NONE = type(None)

TRAINER = {
    "type": Field((str,), "Trainer"),
    "epochs": Field((int,), REQUIRED, _positive),
    "save_dir": Field((str,), "saved/"),
    "save_period": Field((int,), 0, _non_negative),
    "verbosity": Field((int,), 1, _one_of(0, 1, 2)),
    "monitor": Field((str,), "min val_loss", _monitor),
    "early_stop": Field((int,), 0, _non_negative),
    "tensorboard": Field((bool,), True),
    "confusion_max_classes": Field((int,), 50, _non_negative),
    "log_step": Field((int,), 10, _positive),
    "progress_bar": Field((bool,), True),
    "amp": Field((bool, str), False, _one_of(False, "bf16", "fp16")),
    "grad_accum_steps": Field((int,), 1, _positive),
    "grad_clip_norm": Field((int, float, NONE), None, lambda v: None if v is None else _positive(v)),
    "compile": Field((bool,), False),
    "channels_last": Field((bool,), False),
    "sync_batchnorm": Field((bool,), False),
    "freeze_backbone_epochs": Field((int,), 0, _non_negative),
    "ema": Field((dict, NONE), None),
    "mixup": Field((dict, NONE), None),
}
EMA = {
    "decay": Field((float,), 0.9998, lambda v: None if 0 < v < 1 else "must be between 0 and 1"),
    "warmup": Field((bool,), False),
    "validate_both": Field((bool,), False),
}
MIXUP = {
    "mixup_alpha": Field((float,), 0.8, _non_negative),
    "cutmix_alpha": Field((float,), 1.0, _non_negative),
    "prob": Field((float,), 1.0, _fraction),
    "switch_prob": Field((float,), 0.5, _fraction),
    "off_epoch": Field((int, NONE), None, lambda v: None if v is None else _positive(v)),
    "label_smoothing": Field((float,), 0.1, _fraction),
}
OPTIMIZER = {  # beside "type" and "args"
    "param_groups": Field((list,), []),
    "no_decay_norm_and_bias": Field((bool,), True),
    "layer_decay": Field((float, NONE), None, lambda v: None if v is None or 0 < v <= 1 else "must be in (0, 1]"),
}
LR_SCHEDULER = {  # beside "type" and "args"
    "interval": Field((str,), "epoch", _one_of("epoch", "step")),
    "warmup": Field((dict, NONE), None),
}
WARMUP = {
    "epochs": Field((int, NONE), None, lambda v: None if v is None else _positive(v)),
    "steps": Field((int, NONE), None, lambda v: None if v is None else _positive(v)),
    "start_factor": Field((float,), 0.01, lambda v: None if 0 < v <= 1 else "must be in (0, 1]"),
}
WANDB = {
    "enabled": Field((bool,), False),
    "project": Field((str, NONE), None),
    "entity": Field((str, NONE), None),
    "mode": Field((str,), "offline", _one_of("offline", "online", "disabled")),
    "tags": Field((list,), []),
    "name": Field((str, NONE), None),
}
KFOLD = {
    "n_splits": Field((int,), 5, lambda v: None if v >= 2 else "must be 2 or more"),
    "stratified": Field((bool,), True),
    "shuffle": Field((bool,), True),
    "seed": Field((int, NONE), None),
    "group": Field((bool,), True),
    "n_bins": Field((int,), 10, lambda v: None if v >= 2 else "must be 2 or more"),
}
INFERENCE = {
    "split": Field((str,), "test", _one_of("test", "valid")),
    "dataset": Field((dict, NONE), None),
    "data_loader": Field((dict, NONE), None),
    "output": Field((str, NONE), None),
    "tta": Field((list,), []),
}
TUNE = {  # tune.py's search; the space entries are checked in utils/config/tune_space.py
    "direction": Field((str,), "auto", _one_of("auto", "minimize", "maximize")),
    "space": Field((dict,), {}),
    "sampler": Field((dict, NONE), None),
    "pruner": Field((dict, NONE), None),
    "heartbeat_interval": Field((int,), 60, _positive),
    "grace_period": Field((int, NONE), None, lambda v: None if v is None else _positive(v)),
    "max_retry": Field((int,), 3, _non_negative),
    "plots": Field((bool,), True),
}
TOP_LEVEL = {
    "name": Field((str,)),
    "n_gpu": Field((int,), 1, _non_negative),
    "seed": Field((int,), 0),
    "deterministic": Field((bool,), False),
    "arch": Field((dict,)),
    "dataset": Field((dict,)),
    "data_loader": Field((dict,)),
    "optimizer": Field((dict,)),
    "loss": Field((str, dict)),
    "metrics": Field((list,), []),
    "lr_scheduler": Field((dict, NONE), None),
    "trainer": Field((dict,)),
    "wandb": Field((dict,), {}),
    "kfold": Field((dict,), {}),
    "inference": Field((dict,), {}),
    "resume_history": Field((list,), [], _history),
    "task": Field((str, dict), "Classification"),
    "tune": Field((dict,), {}),
}
SECTIONS = {"trainer": TRAINER, "wandb": WANDB, "kfold": KFOLD, "inference": INFERENCE, "tune": TUNE}


def did_you_mean(word: str, choices) -> str:
    """' (did you mean "x"?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(types: tuple) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
             dict: "an object", list: "a list", NONE: "null"}
    return " or ".join(names[t] for t in types)


def check_value(where: str, value, field: Field):
    """Raise a ConfigError unless ``value`` has one of the field's types and passes its check."""
    # JSON true/false are ints to Python; an integer field must not take them, a number field takes ints.
    fits = any(
        (isinstance(value, t) and not (t in (int, float) and isinstance(value, bool)))
        or (t is float and isinstance(value, int) and not isinstance(value, bool))
        for t in field.types
    )
    if not fits:
        raise ConfigError(where, f"must be {_type_name(field.types)}, got {value!r}")
    problem = field.check(value) if field.check else None
    if problem:
        raise ConfigError(where, f"{problem}, got {value!r}")


def check_section(where: str, values: dict, schema: dict[str, Field]) -> dict:
    """Check a section's keys and values; returns it with the defaults filled in."""
    if not isinstance(values, dict):
        raise ConfigError(where, f"must be an object, got {values!r}")
    for key in values:
        if key not in schema and not key.startswith("_"):
            raise ConfigError(f"{where}.{key}" if where else key,
                              f"unknown key{did_you_mean(key, schema)}; known keys: {', '.join(schema)}")
    resolved = {}
    for key, field in schema.items():
        path = f"{where}.{key}" if where else key
        if key in values:
            check_value(path, values[key], field)
            resolved[key] = values[key]
        elif field.default is REQUIRED:
            raise ConfigError(path, "is required but missing")
        else:
            resolved[key] = field.default
    return resolved | {key: value for key, value in values.items() if key.startswith("_")}


def check_component(where: str, spec, extra_keys: tuple = ()) -> None:
    """A component is ``{"type": NAME, "args": {...}}``."""
    if not isinstance(spec, dict):
        raise ConfigError(where, f'must be {{"type": NAME, "args": {{...}}}}, got {spec!r}')
    allowed = ("type", "args", *extra_keys)
    for key in spec:
        if key not in allowed and not key.startswith("_"):
            raise ConfigError(f"{where}.{key}", f"unknown key{did_you_mean(key, allowed)}; "
                                                f"known keys: {', '.join(allowed)}")
    if "type" not in spec:
        raise ConfigError(f"{where}.type", "is required but missing")
    if not isinstance(spec["type"], str):
        raise ConfigError(f"{where}.type", f"must be a string, got {spec['type']!r}")
    if not isinstance(spec.get("args", {}), dict):
        raise ConfigError(f"{where}.args", f"must be an object, got {spec['args']!r}")


def validate(config) -> dict:
    """Check the whole config before anything is built; returns it with defaults filled in."""
    if not isinstance(config, dict):
        raise ConfigError("config", "must be a JSON object")
    resolved = check_section("", config, TOP_LEVEL)
    check_path_part("name", resolved["name"])
    for name, schema in SECTIONS.items():
        resolved[name] = check_section(name, resolved[name], schema)
    for name in COMPONENT_SECTIONS:
        check_component(name, resolved[name], extra_keys=tuple(OPTIMIZER) if name == "optimizer" else ())
    _check_training_recipe(resolved)
    if not isinstance(resolved["loss"], str):
        check_component("loss", resolved["loss"])
    for i, entry in enumerate(resolved["metrics"]):
        if not isinstance(entry, str):
            check_component(f"metrics.{i}", entry, extra_keys=("name",))
    for key in ("dataset", "data_loader"):
        if resolved["inference"][key] is not None:
            check_component(f"inference.{key}", resolved["inference"][key])
    for i, entry in enumerate(resolved["inference"]["tta"]):
        check_component(f"inference.tta.{i}", entry)
    if isinstance(resolved["task"], str):  # a bare name: {"type": NAME}
        resolved["task"] = {"type": resolved["task"], "args": {}}
    check_component("task", resolved["task"])
    for key in ("sampler", "pruner"):
        if resolved["tune"][key] is not None:
            check_component(f"tune.{key}", resolved["tune"][key])
    _check_metric_names(resolved)
    return resolved


def _with_extras(where: str, spec: dict, schema: dict) -> dict:
    """A component section with extra keys beside type and args: checked, defaults filled in."""
    check_component(where, spec, extra_keys=tuple(schema))
    extras = check_section(where, {k: v for k, v in spec.items() if k in schema}, schema)
    return {k: v for k, v in spec.items() if k not in schema} | extras


def _check_training_recipe(resolved: dict) -> None:
    """The optimizer, scheduler, EMA and MixUp settings (issue 16's fine-tuning recipe)."""
    resolved["optimizer"] = _with_extras("optimizer", resolved["optimizer"], OPTIMIZER)
    trainer = resolved["trainer"]
    for key, schema in (("ema", EMA), ("mixup", MIXUP)):
        if trainer[key] is not None:
            trainer[key] = check_section(f"trainer.{key}", trainer[key], schema)
    if resolved["lr_scheduler"] is None:
        return
    scheduler = resolved["lr_scheduler"] = _with_extras("lr_scheduler", resolved["lr_scheduler"], LR_SCHEDULER)
    if scheduler["warmup"] is None:
        return
    warmup = scheduler["warmup"] = check_section("lr_scheduler.warmup", scheduler["warmup"], WARMUP)
    if (warmup["epochs"] is None) == (warmup["steps"] is None):
        raise ConfigError("lr_scheduler.warmup", 'give one of "epochs" and "steps", e.g. {"epochs": 2}')
    if warmup["steps"] is not None and scheduler["interval"] != "step":
        raise ConfigError("lr_scheduler.warmup.steps", 'counts optimizer steps: set "interval": "step", or '
                                                       'give "epochs"')
    if scheduler["type"] in ("ReduceLROnPlateau", "ChainedScheduler"):
        raise ConfigError("lr_scheduler.warmup", f"torch's SequentialLR cannot put a warmup in front of a "
                                                 f"{scheduler['type']}; use another scheduler")


def metric_names(config: dict) -> list[str]:
    """The column names of the configured metrics: the type, or the entry's "name"."""
    return [entry if isinstance(entry, str) else entry.get("name", entry["type"]) for entry in config["metrics"]]


RESERVED_COLUMNS = ("epoch", "loss", "lr", "epoch_time")


def _check_metric_names(config: dict) -> None:
    seen = set()
    for i, (name, entry) in enumerate(zip(metric_names(config), config["metrics"])):
        where = f"metrics.{i}.name" if isinstance(entry, dict) and "name" in entry else f"metrics.{i}"
        if not isinstance(name, str) or not name or name in RESERVED_COLUMNS or name.startswith("val_"):
            raise ConfigError(where, f"{name!r} cannot name a metric column: use a string other than "
                                     f"{', '.join(RESERVED_COLUMNS)} that does not start with 'val_'")
        if name in seen:
            raise ConfigError(where, f"{name!r} names two metrics; give one of them another \"name\"")
        seen.add(name)


def check_path_part(where: str, value: str) -> None:
    """A name that becomes a folder: no separators, not '..' (it must stay inside save_dir)."""
    if not value or value in (".", "..") or any(c in value for c in "/\\"):
        raise ConfigError(where, f"{value!r} is used as a folder name: no '/', '\\', '.' or '..'")


def check_monitor(config: dict, columns: list[str]) -> None:
    """``trainer.monitor`` must name a logged value; ``columns`` are the task's metric columns."""
    monitor = config["trainer"]["monitor"]
    if monitor == "off":
        return
    names = ["loss", *columns]
    logged = names + [f"val_{name}" for name in names]
    key = monitor.split()[1]
    if key not in logged:
        raise ConfigError("trainer.monitor", f"{key!r} is not a logged value{did_you_mean(key, logged)}; "
                                             f"choose from {', '.join(logged)}")
