"""Command-line changes to a config: ``KEY.PATH=VALUE`` and ``+KEY.PATH=VALUE``."""
import copy
import json
from collections.abc import Sequence

from utils.config.schema import did_you_mean
from utils.errors import ConfigError


def parse_overrides(items: Sequence[str]) -> dict:
    """``["trainer.epochs=3", "+optimizer.args.weight_decay=1e-4"]`` -> {path: value}.

    A VALUE is read as JSON (numbers, true/false, null, lists, objects), else kept as a string.
    """
    modification = {}
    for item in items:
        path, equals, text = item.partition("=")
        if not equals or not path.lstrip("+"):
            raise ConfigError("command line", f"{item!r} is not an option or a KEY.PATH=VALUE override")
        try:
            modification[path] = json.loads(text)
        except json.JSONDecodeError:
            modification[path] = text
    return modification


def apply_modifications(config: dict, modification: dict) -> None:
    """Set each ``path: value`` in place. A path that does not exist is an error unless it starts
    with "+", which adds it (with any missing parent objects)."""
    for raw_path, value in modification.items():
        add = raw_path.startswith("+")
        keys = raw_path.lstrip("+").split(".")
        node = config
        for depth, key in enumerate(keys):
            here = ".".join(keys[: depth + 1])
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(here, f"no such list index (the list has {len(node)} entries)")
                key = int(key)
            elif not isinstance(node, dict):
                raise ConfigError(here, f"cannot set a key inside {node!r}")
            elif key not in node:
                if not add:
                    raise ConfigError(here, f"no such key in the config{did_you_mean(key, node)}; "
                                            f"to add it, write +{raw_path}=...")
                if not last:
                    node[key] = {}
            if last:
                node[key] = copy.deepcopy(value)
            else:
                if node[key] is None and add:
                    node[key] = {}
                node = node[key]
