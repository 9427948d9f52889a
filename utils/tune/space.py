"""The ``tune`` section: the search space, the direction, and optuna's sampler and pruner.

The space's keys are the dotted paths of command-line overrides (``+PATH`` adds a key), each with
the distribution to draw it from:

    "tune": {"space": {"optimizer.args.lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": true},
                       "data_loader.args.batch_size": {"type": "categorical", "choices": [32, 64]}},
             "sampler": {"type": "TPESampler", "args": {"seed": 0}},
             "pruner": {"type": "MedianPruner", "args": {"n_warmup_steps": 2}}}

``check_space`` checks all of it before the first trial; ``suggest`` draws one trial's changes.
"""
import copy
import importlib
import json

from utils.config import components
from utils.config import schema as config_schema
from utils.config.overrides import apply_modifications
from utils.config.schema import did_you_mean
from utils.errors import ConfigError

KEYS = {"float": ("low", "high", "log", "step"), "int": ("low", "high", "log", "step"), "categorical": ("choices",)}
PRIMITIVE = (str, int, float, bool, type(None))


def check_space(config: dict) -> dict:
    """Check every entry of ``tune.space`` and every value it can take; returns the space.

    Each path is applied to a copy of the config with its lowest, highest and every listed value,
    then the copy is validated like any config, so a typo is the override's one-line error.

    Examples:
        >>> check_space(config)    # ConfigError: tune.space: optimizer.args.lrr: no such key ...
    """
    space = config["tune"]["space"]
    if not space:
        raise ConfigError("tune.space", "is empty: give at least one path to search, e.g. "
                                        '"optimizer.args.lr": {"type": "float", "low": 1e-4, "high": 0.1}')
    for path, spec in space.items():
        for value in _check_entry(path, spec):
            candidate = copy.deepcopy(config)
            try:
                apply_modifications(candidate, {path: value})
                components.check_all(config_schema.validate(candidate))
            except ConfigError as error:
                what = error.what if error.where == path.lstrip("+") else str(error)
                raise ConfigError("tune.space", f"{path}: {what}") from None
    return space


def _check_entry(path: str, spec) -> list:
    """Check one entry's distribution; returns the values to try the config with."""
    where = f"{path}:"
    if not isinstance(spec, dict) or spec.get("type") not in KEYS:
        raise ConfigError("tune.space", f'{where} must be {{"type": "float"|"int"|"categorical", ...}}, got {spec!r}')
    allowed = ("type", *KEYS[spec["type"]])
    for key in spec:
        if key not in allowed and not key.startswith("_"):
            raise ConfigError("tune.space", f"{where} unknown key {key!r}{did_you_mean(key, allowed)}; "
                                            f"a {spec['type']} takes: {', '.join(allowed[1:])}")
    if spec["type"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError("tune.space", f"{where} choices must be a non-empty list, got {choices!r}")
        return choices
    number = int if spec["type"] == "int" else (int, float)
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError("tune.space", f"{where} {key} is required but missing")
        if not isinstance(spec[key], number) or isinstance(spec[key], bool):
            raise ConfigError("tune.space", f"{where} {key} must be {'an integer' if number is int else 'a number'}, "
                                            f"got {spec[key]!r}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if low > high:
        raise ConfigError("tune.space", f"{where} low {low} is greater than high {high}")
    if not isinstance(log, bool):
        raise ConfigError("tune.space", f"{where} log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError("tune.space", f"{where} a log scale needs low > 0, got {low}")
    if step is not None and (not isinstance(step, number) or isinstance(step, bool) or step <= 0 or log):
        raise ConfigError("tune.space", f"{where} step must be a positive {spec['type']} (and not with log), "
                                        f"got {step!r}")
    if low == high or (step is not None and step > high - low):
        raise ConfigError("tune.space", f"{where} the range {low} .. {high}" + (f" with step {step}" if step else "")
                                        + " holds a single value: every trial would be the same; widen it, or "
                                          "set the value in the config instead")
    return [low, high]


def suggest(trial, space: dict) -> dict:
    """Draw one trial's values from the space: {override path: value}.

    A categorical parameter whose choices are not all plain values (lists, objects) is stored in
    the study as JSON text, e.g. "[16, 32, 64]", since optuna keeps only plain values.
    """
    modification = {}
    for path, spec in space.items():
        name = path.lstrip("+")
        if spec["type"] == "categorical":
            choices = spec["choices"]
            if all(isinstance(choice, PRIMITIVE) for choice in choices):
                value = trial.suggest_categorical(name, choices)
            else:
                value = json.loads(trial.suggest_categorical(name, [json.dumps(c) for c in choices]))
        elif spec["type"] == "int":
            value = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step") or 1,
                                      log=spec.get("log", False))
        else:
            value = trial.suggest_float(name, spec["low"], spec["high"], step=spec.get("step"),
                                        log=spec.get("log", False))
        modification[path] = value
    return modification


def study_direction(config: dict) -> str:
    """"minimize" or "maximize": the direction of ``trainer.monitor`` (``tune.direction`` may only agree)."""
    monitor, direction = config["trainer"]["monitor"], config["tune"]["direction"]
    if monitor == "off":
        raise ConfigError("trainer.monitor", "is 'off', but a search needs a value to optimize, "
                                             "e.g. 'min val_loss' or 'max val_accuracy'")
    implied = "minimize" if monitor.split()[0] == "min" else "maximize"
    if direction not in ("auto", implied):
        raise ConfigError("tune.direction", f"{direction!r} contradicts trainer.monitor {monitor!r}: "
                                            f"use 'auto' (or {implied!r})")
    return implied


def build_search_part(config: dict, part: str):
    """The optuna sampler or pruner ``tune.<part>`` names, looked up in optuna.samplers or optuna.pruners.

    None (the default) is optuna's default: TPESampler, or MedianPruner.

    Examples:
        >>> build_search_part(config, "pruner")    # = optuna.pruners.MedianPruner(**args)
    """
    module = importlib.import_module(f"optuna.{part}s")
    spec = config["tune"][part] or {"type": "TPESampler" if part == "sampler" else "MedianPruner"}
    obj = components.lookup_type(module, spec["type"], f"tune.{part}.type")
    components.check_args(f"tune.{part}", obj, spec.get("args", {}))
    return components.call(obj, f"tune.{part}", **spec.get("args", {}))
