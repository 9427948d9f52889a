"""What a config may hold: every known key, its type, its default and its range.

``validate(config)`` checks a config against this schema before anything is built and returns it
with the defaults filled in. Keys that start with "_" are comments and are ignored.
"""
import copy
import logging

from utils.config.fields import (  # noqa: F401  (did_you_mean and check_component_shape are used from here too)
    NONE,
    REQUIRED,
    Field,
    check_component_shape,
    check_section,
    did_you_mean,
    fraction,
    history_entries,
    monitor_spec,
    non_negative,
    one_of,
    positive,
)
from utils.config.values import check_values
from utils.config.weight_averaging import check_averaging
from utils.errors import ConfigError

logger = logging.getLogger(__name__)

COMPONENT_SECTIONS = ("arch", "dataset", "data_loader", "optimizer")

TRAINER = {
    "type": Field((str,), "Trainer"),
    "epochs": Field((int,), REQUIRED, positive),
    "save_dir": Field((str,), "saved/"),
    "save_period": Field((int,), 0, non_negative),
    "verbosity": Field((int,), 1, one_of(0, 1, 2)),
    "monitor": Field((str,), "min val_loss", monitor_spec),
    "early_stop": Field((int,), 0, non_negative),
    "tensorboard": Field((bool,), True),
    "confusion_max_classes": Field((int,), 50, non_negative),
    "log_step": Field((int,), 10, positive),
    "progress_bar": Field((bool,), True),
    "amp": Field((bool, str), False, one_of(False, "bf16", "fp16")),
    "grad_accum_steps": Field((int,), 1, positive),
    "grad_clip_norm": Field((int, float, NONE), None, lambda v: None if v is None else positive(v)),
    "compile": Field((bool,), False),
    "channels_last": Field((bool,), False),
    "sync_batchnorm": Field((bool,), False),
    "freeze_backbone_epochs": Field((int,), 0, non_negative),
    "ema": Field((dict, NONE), None),
    "mixup": Field((dict, NONE), None),
    "save_top_k": Field((int,), 0, non_negative),
    "average_top_k": Field((bool,), False),
    "swa": Field((dict, NONE), None),
    "async_checkpoint": Field((bool,), True),
}
EMA = {
    "decay": Field((float,), 0.9998, lambda v: None if 0 < v < 1 else "must be between 0 and 1"),
    "warmup": Field((bool,), False),
    "validate_both": Field((bool,), False),
}
MIXUP = {
    "mixup_alpha": Field((float,), 0.8, non_negative),
    "cutmix_alpha": Field((float,), 1.0, non_negative),
    "prob": Field((float,), 1.0, fraction),
    "switch_prob": Field((float,), 0.5, fraction),
    "off_epoch": Field((int, NONE), None, lambda v: None if v is None else positive(v)),
    "label_smoothing": Field((float,), 0.1, fraction),
}
OPTIMIZER = {  # beside "type" and "args"
    "param_groups": Field((list,), []),
    "no_decay_norm_and_bias": Field((bool,), True),
    "layer_decay": Field((float, NONE), None, lambda v: None if v is None or 0 < v <= 1 else "must be in (0, 1]"),
}
LR_SCHEDULER = {  # beside "type" and "args"
    "interval": Field((str,), "epoch", one_of("epoch", "step")),
    "warmup": Field((dict, NONE), None),
}
WARMUP = {
    "epochs": Field((int, NONE), None, lambda v: None if v is None else positive(v)),
    "steps": Field((int, NONE), None, lambda v: None if v is None else positive(v)),
    "start_factor": Field((float,), 0.01, lambda v: None if 0 < v <= 1 else "must be in (0, 1]"),
}
WANDB = {
    "enabled": Field((bool,), False),
    "project": Field((str, NONE), None),
    "entity": Field((str, NONE), None),
    "mode": Field((str,), "offline", one_of("offline", "online", "disabled")),
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
    "split": Field((str,), "test", one_of("test", "valid")),
    "dataset": Field((dict, NONE), None),
    "data_loader": Field((dict, NONE), None),
    "output": Field((str, NONE), None),
    "tta": Field((list,), []),
    "submission": Field((dict, NONE), None),
}
SUBMISSION = {  # a competition's CSV, copied with one column filled in (utils/submission.py)
    "csv": Field((str,), REQUIRED),
    "id_column": Field((str,), REQUIRED),
    "column": Field((str,), REQUIRED),
    "prediction_column": Field((str,), "prediction"),
    "output": Field((str, NONE), None),
}
TUNE = {  # tune.py's search; the space entries are checked in utils/tune/space.py
    "direction": Field((str,), "auto", one_of("auto", "minimize", "maximize")),
    "space": Field((dict,), {}),
    "sampler": Field((dict, NONE), None),
    "pruner": Field((dict, NONE), None),
    "heartbeat_interval": Field((int,), 60, positive),
    "grace_period": Field((int, NONE), None, lambda v: None if v is None else positive(v)),
    "max_retry": Field((int,), 3, non_negative),
    "plots": Field((bool,), True),
}
DISTILLATION = {  # the args of "loss": {"type": "distillation"}
    "teacher": Field((str,), REQUIRED),
    "alpha": Field((float,), 0.5, fraction),
    "temperature": Field((float,), 4.0, positive),
    "base": Field((str, dict), "cross_entropy"),
}
PSEUDO_LABELS = {
    "csv": Field((str,), REQUIRED),
    "dataset": Field((dict,), REQUIRED),
    "threshold": Field((float,), 0.9, fraction),
    "soft": Field((bool,), False),
    "weight": Field((float,), 1.0, positive),
}
TOP_LEVEL = {
    "name": Field((str,)),
    "n_gpu": Field((int,), 1, non_negative),
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
    "resume_history": Field((list,), [], history_entries),
    "task": Field((str, dict), "Classification"),
    "tune": Field((dict,), {}),
    "pseudo_labels": Field((dict, NONE), None),
}
SECTIONS = {"trainer": TRAINER, "wandb": WANDB, "kfold": KFOLD, "inference": INFERENCE, "tune": TUNE}


def with_defaults(config):
    """A copy of ``config`` with the defaults of missing keys filled in, nothing checked: what
    command-line overrides are applied to, so that they can reach a key the file leaves out."""
    if not isinstance(config, dict):
        return config
    filled = copy.deepcopy(config)
    sections = {"": TOP_LEVEL, **SECTIONS, "optimizer": OPTIMIZER, "lr_scheduler": LR_SCHEDULER}
    for name, schema in sections.items():
        node = filled if not name else filled.get(name)
        if not isinstance(node, dict):
            continue
        for key, field in schema.items():
            if key not in node and field.default is not REQUIRED:
                node[key] = copy.deepcopy(field.default)
    return filled


def validate(config) -> dict:
    """Check the whole config before anything is built; returns it with defaults filled in."""
    if not isinstance(config, dict):
        raise ConfigError("config", "must be a JSON object")
    resolved = check_section("", config, TOP_LEVEL)
    check_path_part("name", resolved["name"])
    for name, schema in SECTIONS.items():
        resolved[name] = check_section(name, resolved[name], schema)
    for name in COMPONENT_SECTIONS:
        check_component_shape(name, resolved[name], extra_keys=tuple(OPTIMIZER) if name == "optimizer" else ())
    _check_training_recipe(resolved)
    check_values(resolved)  # the optimizer's options (also per parameter group), the loader's batch
    if not isinstance(resolved["loss"], str):
        check_component_shape("loss", resolved["loss"])
    _check_teacher_sections(resolved)
    for i, entry in enumerate(resolved["metrics"]):
        if not isinstance(entry, str):
            check_component_shape(f"metrics.{i}", entry, extra_keys=("name",))
    for key in ("dataset", "data_loader"):
        if resolved["inference"][key] is not None:
            check_component_shape(f"inference.{key}", resolved["inference"][key])
    if resolved["inference"]["submission"] is not None:
        resolved["inference"]["submission"] = check_section("inference.submission", resolved["inference"]["submission"],
                                                            SUBMISSION)
    for i, entry in enumerate(resolved["inference"]["tta"]):
        check_component_shape(f"inference.tta.{i}", entry)
    if isinstance(resolved["task"], str):  # a bare name: {"type": NAME}
        resolved["task"] = {"type": resolved["task"], "args": {}}
    check_component_shape("task", resolved["task"])
    for key in ("sampler", "pruner"):
        if resolved["tune"][key] is not None:
            check_component_shape(f"tune.{key}", resolved["tune"][key])
    _check_metric_names(resolved)
    return resolved


def _with_extras(where: str, spec: dict, schema: dict) -> dict:
    """A component section with extra keys beside type and args: checked, defaults filled in."""
    check_component_shape(where, spec, extra_keys=tuple(schema))
    extras = check_section(where, {k: v for k, v in spec.items() if k in schema}, schema)
    return {k: v for k, v in spec.items() if k not in schema} | extras


def _check_training_recipe(resolved: dict) -> None:
    """The optimizer, scheduler, EMA and MixUp settings of the fine-tuning recipe."""
    resolved["optimizer"] = _with_extras("optimizer", resolved["optimizer"], OPTIMIZER)
    trainer = resolved["trainer"]
    for key, schema in (("ema", EMA), ("mixup", MIXUP)):
        if trainer[key] is not None:
            trainer[key] = check_section(f"trainer.{key}", trainer[key], schema)
    check_averaging(trainer)  # save_top_k, average_top_k, swa
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


def _check_teacher_sections(resolved: dict) -> None:
    """The ``distillation`` loss's args and the ``pseudo_labels`` section (utils/data/teacher.py)."""
    loss = resolved["loss"]
    if isinstance(loss, dict) and loss["type"] == "distillation":
        args = loss["args"] = check_section("loss.args", loss.get("args", {}), DISTILLATION)
        if not isinstance(args["base"], str):
            check_component_shape("loss.args.base", args["base"])
        if args["temperature"] < 1:
            logger.warning("loss.args.temperature is %s: below 1 the teacher's labels get sharper, not softer "
                           "(1 to 10 is usual)", args["temperature"])
    if resolved["pseudo_labels"] is not None:
        section = resolved["pseudo_labels"] = check_section("pseudo_labels", resolved["pseudo_labels"], PSEUDO_LABELS)
        check_component_shape("pseudo_labels.dataset", section["dataset"])
        if section["threshold"] < 0.5:
            logger.warning("pseudo_labels.threshold is %s: samples the ensemble is unsure of get labels",
                           section["threshold"])


def metric_names(config: dict) -> list[str]:
    """The column names of the configured metrics: the type, or the entry's "name"."""
    return [entry if isinstance(entry, str) else entry.get("name", entry["type"]) for entry in config["metrics"]]


RESERVED_COLUMNS = ("epoch", "loss", "lr", "epoch_time", "data_wait")


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
