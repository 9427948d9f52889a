"""Safe lookup of the classes and functions a config names, and checks of their arguments.

A config's "type" is only ever a public class or function defined in its section's module (or that
module's package). Dotted paths, private names and anything imported from elsewhere (``os.system``,
``__import__``) are refused, so nothing in a config can reach an arbitrary import.
"""
import importlib
import inspect
import re
from types import ModuleType

from utils.config import schema as config_schema
from utils.config.schema import did_you_mean
from utils.config.values import check_with_task
from utils.errors import ConfigError

# Where each config section looks its "type" up: the one table of component names.
SECTION_MODULES = {
    "arch": "model.model",
    "dataset": "dataset.datasets",
    "data_loader": "data_loader.data_loaders",
    "loss": "model.loss",
    "metrics": "model.metric",
    "optimizer": "torch.optim",
    "lr_scheduler": "torch.optim.lr_scheduler",
    "trainer": "trainer",
    "task": "model.task",
    "transforms": "torchvision.transforms.v2",
}
# Arguments the code passes itself: how many leading positional ones, and which keywords.
INJECTED = {
    "data_loader": (1, ("seed",)),
    "optimizer": (1, ()),
    "lr_scheduler": (1, ()),
    "loss": (2, ()),
    "metrics": (2, ()),
}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def section_module(section: str) -> ModuleType:
    return importlib.import_module(SECTION_MODULES[section])


def offered(module: ModuleType) -> list[str]:
    """The names a config may use in ``module``: its public classes and functions."""
    return sorted(name for name, obj in vars(module).items() if _is_offered(module, name, obj))


def _is_offered(module: ModuleType, name: str, obj) -> bool:
    package = module.__name__.split(".")[0]
    defined_here = (getattr(obj, "__module__", None) or "").split(".")[0] == package
    return (not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
            and defined_here)


def lookup_type(module: ModuleType, name: str, where: str):
    """The class or function ``name`` of ``module``, or a ConfigError listing what there is.

    Examples:
        >>> lookup_type(torch.optim, "Adam", "optimizer.type")
        <class 'torch.optim.adam.Adam'>
    """
    choices = offered(module)
    listing = ", ".join(choices[:40]) + (", ..." if len(choices) > 40 else "")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(where, f"{name!r} is not allowed: a type is a plain public name from "
                                 f"{module.__name__} (no dots, no leading underscore); available: {listing}")
    obj = vars(module).get(name)
    if obj is None or not _is_offered(module, name, obj):
        raise ConfigError(where, f"unknown type {name!r} in {module.__name__}{did_you_mean(name, choices)}; "
                                 f"available: {listing}")
    return obj


def parameters(obj) -> tuple[list[str], list[str], bool]:
    """(argument names, required argument names, accepts any keyword) of a class or function.

    A class whose ``__init__`` takes ``**kwargs`` also accepts its parent classes' arguments.
    """
    names, required = [], []
    targets = [obj]
    if inspect.isclass(obj):
        targets = [base.__init__ for base in obj.__mro__ if "__init__" in vars(base) and base is not object]
    for i, target in enumerate(targets):
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return names, required, True
        params = [p for p in signature.parameters.values() if p.name != "self"]
        var_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
        for p in params:
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in names:
                continue
            names.append(p.name)
            if i == 0 and p.default is p.empty:
                required.append(p.name)
        if not var_keyword:
            return names, required, False
    return names, required, True


def check_args(where: str, obj, args: dict, section: str = "") -> None:
    """Raise a ConfigError for an argument ``obj`` does not take, or a required one left out."""
    n_positional, injected = INJECTED.get(section, (0, ()))
    if section in ("loss", "metrics") and inspect.isclass(obj):
        n_positional = 0  # a class is built from its args; its instance is called with (output, target)
    names, required, any_keyword = parameters(obj)
    supplied = names[:n_positional] + list(injected)
    for key in args:
        if key in supplied[:n_positional] or (key not in names and not any_keyword):
            accepted = [n for n in names if n not in supplied]
            raise ConfigError(f"{where}.args.{key}",
                              f"{obj.__name__} does not accept {key!r}{did_you_mean(key, accepted)}; "
                              f"it accepts: {', '.join(accepted) or 'no arguments'}")
    for name in required:
        if name not in args and name not in supplied:
            raise ConfigError(f"{where}.args.{name}", f"{obj.__name__} requires {name!r}, which is missing")


def check_component(where: str, spec, section: str):
    """Resolve a config entry (a name or {type, args}) and check its arguments; returns the object."""
    name, args = (spec, {}) if isinstance(spec, str) else (spec["type"], spec.get("args", {}))
    obj = lookup_type(section_module(section), name, f"{where}.type" if not isinstance(spec, str) else where)
    check_args(where, obj, args, section)
    for key, value in args.items():
        if key.endswith("transform") and value is not None and section == "dataset" and not isinstance(value, list):
            raise ConfigError(f"{where}.args.{key}", f'must be a list of transforms, e.g. [{{"type": '
                                                     f'"RandomHorizontalFlip"}}], got {value!r}')
        if is_transform_list(key, value):
            for i, step in enumerate(value):
                config_schema.check_component_shape(f"{where}.args.{key}.{i}", step)
                check_component(f"{where}.args.{key}.{i}", step, "transforms")
    return obj


def is_transform_list(key: str, value) -> bool:
    """Dataset arguments named ``*transform`` that hold a list are transform pipelines."""
    return key.endswith("transform") and isinstance(value, list)


def call(obj, name: str, /, *args, **kwargs):
    """Call a constructor; an error it raises from its arguments becomes a ConfigError naming the section.

    Examples:
        >>> call(torch.optim.SGD, "optimizer", params, lr=-1)    # ConfigError: optimizer.args.lr ...
    """
    try:
        return obj(*args, **kwargs)
    except (TypeError, ValueError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        key, _, rest = message.partition(":")
        if key in kwargs and rest:
            raise ConfigError(f"{name}.args.{key}", rest.strip()) from error
        raise ConfigError(f"{name}", f"{obj.__name__}(...) failed: {message}") from error


def build_transform(steps: list, where: str):
    """A ``v2.Compose`` of torchvision.transforms.v2 steps given as {type, args} (None for no steps).

    A step's argument that is itself a list of steps (RandomApply, RandomChoice) is built as well.

    Examples:
        >>> build_transform([{"type": "RandomHorizontalFlip", "args": {"p": 0.5}}], "dataset")
    """
    if not steps:
        return None  # an empty pipeline: the samples are used as they are
    return section_module("transforms").Compose([_build_step(step, f"{where}.{i}") for i, step in enumerate(steps)])


def _build_step(step: dict, where: str):
    obj = check_component(where, step, "transforms")
    args = {}
    for key, value in step.get("args", {}).items():
        if isinstance(value, list) and value and all(isinstance(s, dict) and "type" in s for s in value):
            value = [_build_step(s, f"{where}.args.{key}.{i}") for i, s in enumerate(value)]
        elif key == "dtype" and isinstance(value, str):  # JSON has no dtypes: "float32" is torch.float32
            value = _dtype(value, f"{where}.args.dtype")
        args[key] = value
    return call(obj, where, **args)


def _dtype(name: str, where: str):
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(where, f"{name!r} is not a torch dtype, e.g. 'float32', 'uint8'")
    return dtype


def check_all(config: dict) -> tuple[dict, object]:
    """Look up every type a config names and check every argument, before anything is built.

    Returns ({section path: class or function}, the task object): what the config's factory uses
    instead of looking the types up again.
    """
    types = {}
    for section in ("arch", "dataset", "data_loader", "optimizer", "loss"):
        types[section] = check_component(section, config[section], section)
    if config["lr_scheduler"] is not None:
        types["lr_scheduler"] = check_scheduler("lr_scheduler", config["lr_scheduler"])
    for i, entry in enumerate(config["metrics"]):
        types[f"metrics.{i}"] = check_component(f"metrics.{i}", entry, "metrics")
    types["trainer"] = lookup_type(section_module("trainer"), config["trainer"]["type"], "trainer.type")
    types["task"] = check_component("task", config["task"], "task")
    # The task names the metric columns (MultiHead adds one per head): monitor may name any of them.
    task = call(types["task"], "task", **config["task"].get("args", {}))
    config_schema.check_monitor(config, task.metric_columns(config_schema.metric_names(config)))
    check_with_task(config, task)  # sampler, MixUp, thresholds and class weights against the task
    inference = config["inference"]
    for section in ("dataset", "data_loader"):
        if inference[section] is not None:
            types[f"inference.{section}"] = check_component(f"inference.{section}", inference[section], section)
    for i, entry in enumerate(inference["tta"]):
        check_component(f"inference.tta.{i}", entry, "transforms")
    if config["pseudo_labels"] is not None:
        types["pseudo_labels.dataset"] = check_component("pseudo_labels.dataset", config["pseudo_labels"]["dataset"],
                                                         "dataset")
    loss = config["loss"]
    if isinstance(loss, dict) and loss["type"] == "distillation":
        base = loss["args"]["base"]
        base = {"type": base} if isinstance(base, str) else base
        if base["type"] == "distillation":
            raise ConfigError("loss.args.base", "is the loss on the true labels, e.g. 'cross_entropy'; it cannot "
                                                "be 'distillation' itself")
        check_component("loss.args.base", base, "loss")
    return types, task


def check_scheduler(where: str, spec: dict):
    """A scheduler and the ones nested in its ``args.schedulers`` (SequentialLR, ChainedScheduler)."""
    obj = lookup_type(section_module("lr_scheduler"), spec["type"], f"{where}.type")
    # ChainedScheduler takes the schedulers first and the optimizer as a keyword.
    check_args(where, obj, spec.get("args", {}), "" if obj.__name__ == "ChainedScheduler" else "lr_scheduler")
    inner = spec.get("args", {}).get("schedulers")
    if inner is not None:
        if not isinstance(inner, list) or not inner:
            raise ConfigError(f"{where}.args.schedulers", f'must be a list of {{"type": NAME, "args": {{...}}}}, '
                                                          f"got {inner!r}")
        for i, entry in enumerate(inner):
            config_schema.check_component_shape(f"{where}.args.schedulers.{i}", entry)
            check_scheduler(f"{where}.args.schedulers.{i}", entry)
            if obj.__name__ == "SequentialLR" and entry["type"] in ("SequentialLR", "ChainedScheduler"):
                raise ConfigError(f"{where}.args.schedulers.{i}", f"torch's SequentialLR cannot hold a {entry['type']}"
                                                                  "; list its schedulers in this SequentialLR instead")
    return obj
