"""The optimizer with parameter groups: per-name learning rates, no decay on biases and norms, layer decay.

Every group's rate is a plain ``lr`` of the torch optimizer (no private "lr_scale" key), so every
scheduler of ``torch.optim.lr_scheduler`` scales it, and every group is logged.

    "optimizer": {"type": "AdamW", "args": {"lr": 0.001, "weight_decay": 0.05},
                  "param_groups": [{"match": "fc|head|classifier", "name": "head", "lr": 0.01}],
                  "no_decay_norm_and_bias": true, "layer_decay": 0.75}
"""
import inspect
import logging
import re

import torch

from utils.config.components import call, lookup_type, parameters, section_module
from utils.errors import ConfigError

logger = logging.getLogger(__name__)


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and normalisation weights (every 1-D tensor), which weight decay should not shrink."""
    return param.ndim <= 1 or name.endswith(".bias")


def _matchers(entries: list[dict], optimizer_class) -> list[tuple[re.Pattern, str, dict]]:
    """(regex, group name, optimizer options) for each entry of ``optimizer.param_groups``."""
    accepted = set(parameters(optimizer_class)[0]) - {"params"}
    matchers = []
    for i, entry in enumerate(entries):
        where = f"optimizer.param_groups.{i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("match"), str):
            raise ConfigError(where, f'must be {{"match": REGEX, "lr": ...}}, got {entry!r}')
        try:
            pattern = re.compile(entry["match"])
        except re.error as error:
            raise ConfigError(f"{where}.match", f"not a regular expression: {error}") from None
        options = {k: v for k, v in entry.items() if k not in ("match", "name") and not k.startswith("_")}
        for key in options:
            if key not in accepted:
                raise ConfigError(f"{where}.{key}", f"{optimizer_class.__name__} has no option {key!r}; "
                                                    f"it has: {', '.join(sorted(accepted))}")
        matchers.append((pattern, str(entry.get("name", i)), options))
    return matchers


def parameter_groups(model: torch.nn.Module, spec: dict, optimizer_class) -> list[dict]:
    """The torch parameter groups a config's optimizer section describes.

    Each parameter goes to the first ``param_groups`` entry whose ``match`` is found in its name
    (``re.search``), else to the "default" group with the optimizer's args; 1-D tensors get weight
    decay 0 when ``no_decay_norm_and_bias``; ``layer_decay`` multiplies the rate of layer ``i`` of
    ``n`` by ``layer_decay ** (n - 1 - i)`` (the model's ``layer_ids``). Groups differing only in
    decay share a name. Each group carries its ``name`` (saved with the optimizer state).
    """
    args = spec.get("args", {})
    signature = inspect.signature(optimizer_class).parameters
    base_lr = args.get("lr", signature["lr"].default if "lr" in signature else None)
    base_decay = args.get("weight_decay", signature["weight_decay"].default if "weight_decay" in signature else 0)
    matchers = _matchers(spec.get("param_groups", []), optimizer_class)
    layer_ids, last_layer = _layer_ids(model, spec.get("layer_decay"))
    groups, used = {}, set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen by the model itself (freeze_backbone_epochs unfreezes later, after this)
        index = next((i for i, (pattern, _, _) in enumerate(matchers) if pattern.search(name)), len(matchers))
        used.add(index)
        group_name, options = (matchers[index][1], matchers[index][2]) if index < len(matchers) else ("default", {})
        decay = options.get("weight_decay", base_decay)
        decays = decay != 0 and not (spec.get("no_decay_norm_and_bias", True) and no_decay(name, param))
        layer = layer_ids.get(name, last_layer)
        key = (index, layer, decays)
        if key not in groups:
            lr = options.get("lr", base_lr)
            if layer_ids:
                lr = lr * spec["layer_decay"] ** (last_layer - layer)
                group_name = f"{group_name}_layer{layer}" if group_name != "default" else f"layer{layer}"
            groups[key] = {**options, "params": [], "lr": lr, "name": group_name}
            if not decays and decay != 0:
                groups[key]["weight_decay"] = 0.0
        groups[key]["params"].append(param)
    for i, (pattern, _, _) in enumerate(matchers):
        if i not in used:
            names = [name for name, _ in model.named_parameters()]
            raise ConfigError(f"optimizer.param_groups.{i}.match", f"{pattern.pattern!r} matches no parameter "
                                                                   "(or only ones an earlier entry took); names "
                                                                   f"look like: {', '.join(names[:4])}")
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], -k[1], not k[2]))]


def _layer_ids(model: torch.nn.Module, layer_decay: float | None) -> tuple[dict[str, int], int]:
    if layer_decay is None:
        return {}, 0
    layer_ids = model.layer_ids() if hasattr(model, "layer_ids") else None
    if not layer_ids:
        raise ConfigError("optimizer.layer_decay", f"{type(model).__name__} has no layer order (layer_ids()); "
                                                   "use a TimmModel, or define layer_ids in your model")
    return layer_ids, max(layer_ids.values())


def build_optimizer(config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``config["optimizer"]`` over every trainable parameter of ``model``, in groups.

    Examples:
        >>> optimizer = build_optimizer(config, model)   # torch.optim.<type>(groups, **args)
    """
    spec = config["optimizer"]
    optimizer_class = lookup_type(section_module("optimizer"), spec["type"], "optimizer.type")
    groups = parameter_groups(model, spec, optimizer_class)
    if len(groups) > 1:
        logger.debug("optimizer groups: %s", ", ".join(f"{g['name']} ({len(g['params'])} tensors, lr {g['lr']:.3g})"
                                                     for g in groups))
    return call(optimizer_class, "optimizer", groups, **spec.get("args", {}))


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rates to log: ``lr`` (the first group) and, with groups of several names, ``lr_<name>`` each.

    (Groups that differ only in weight decay share their name and their rate.)
    """
    lrs = {"lr": optimizer.param_groups[0]["lr"]}
    named = {}
    for i, group in enumerate(optimizer.param_groups):
        named.setdefault(f"lr_{group.get('name', i)}", group["lr"])
    return lrs | named if len(named) > 1 else lrs


def scaled_group_rates(config: dict, lr: float) -> dict:
    """``--lr X``: the overrides that give each parameter group with a rate of its own the same multiple
    of X as it had of ``optimizer.args.lr``, so that the ratios between the groups stay.

    Examples:
        >>> scaled_group_rates({"optimizer": {"args": {"lr": 0.01}, "param_groups": [{"match": "fc", "lr": 0.05}]}},
        ...                    0.02)
        {'optimizer.param_groups.0.lr': 0.1}
    """
    optimizer = config.get("optimizer") if isinstance(config, dict) else None
    base = ((optimizer or {}).get("args") or {}).get("lr") if isinstance(optimizer, dict) else None
    if isinstance(base, bool) or not isinstance(base, (int, float)) or base <= 0:
        return {}
    groups = optimizer.get("param_groups") or []
    return {f"optimizer.param_groups.{i}.lr": lr * (entry["lr"] / base) for i, entry in enumerate(groups)
            if isinstance(entry, dict) and isinstance(entry.get("lr"), (int, float))
            and not isinstance(entry["lr"], bool)}
