"""How a config key is described (a Field: types, default, range check) and checked, one line per error."""
import difflib
from dataclasses import dataclass
from typing import Any

from utils.errors import ConfigError

REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One config key: the JSON types it accepts, its default, and an optional range check."""

    types: tuple
    default: Any = REQUIRED
    check: Any = None  # value -> a description of the problem, or None


def positive(value):
    return None if value > 0 else "must be positive"


def non_negative(value):
    return None if value >= 0 else "must be 0 or more"


def fraction(value):
    return None if 0 <= value <= 1 else "must be between 0 and 1"


def one_of(*choices):
    return lambda value: None if value in choices else f"must be one of {', '.join(map(repr, choices))}"


def monitor_spec(value):
    parts = value.split()
    if value == "off" or (len(parts) == 2 and parts[0] in ("min", "max")):
        return None
    return "must be 'off', 'min <metric>' or 'max <metric>', e.g. 'max val_accuracy'"


def history_entries(value):
    if all(isinstance(entry, dict) and isinstance(entry.get("changes"), dict) for entry in value):
        return None
    return 'must be a list of {"epoch": N, "changes": {...}}, as resuming writes it'


NONE = type(None)


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


def check_component_shape(where: str, spec, extra_keys: tuple = ()) -> None:
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
