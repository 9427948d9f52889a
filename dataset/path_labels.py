"""Labels and groups read from image paths: a regular expression's named groups become table columns.

For folders named ``000001_female_Asian_45`` holding ``mask1.png`` ... ``normal.png``::

    "label_pattern": "(?P<id>\\d+)_(?P<gender>[a-z]+)_[A-Za-z]+_(?P<age>\\d+)/(?P<mask>[a-z_]+)\\d*\\.",
    "label_map": {"mask": {"mask": "wear", "incorrect_mask": "incorrect", "normal": "not_wear"}},
    "label_bins": {"age": [30, 60]},
    "label_column": ["mask", "gender", "age"], "group_column": "id"

``label_map`` turns a column's values into class names (or indices), in the order the map names them;
``label_bins`` turns a numeric column into bins: edges ``[30, 60]`` give ``<30``, ``30-59``, ``>=60``.
Other columns' values are class names, sorted (or class indices, when they are integers).
"""
import logging
import re
from collections.abc import Sequence

from utils.errors import DataError

logger = logging.getLogger(__name__)


def compile_pattern(pattern: str) -> re.Pattern:
    """The pattern, compiled; a ValueError naming ``label_pattern`` when it is not one with named groups."""
    if not isinstance(pattern, str):
        raise ValueError(f"label_pattern: must be a regular expression (a string), got {pattern!r}")
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"label_pattern: {pattern!r} is not a regular expression ({error})") from None
    if not regex.groupindex:
        raise ValueError(f"label_pattern: {pattern!r} has no named group; name each column as (?P<name>...)")
    return regex


def check_columns(regex: re.Pattern, label_column, group_column, label_map, label_bins) -> None:
    """A ValueError naming the key whose column is not a named group of the pattern, or whose map or bins
    are malformed."""
    names = list(regex.groupindex)
    known = f"the groups of label_pattern are {', '.join(names)}"
    columns = label_column if isinstance(label_column, list) else [] if label_column is None else [label_column]
    for key, wanted in (("label_column", columns), ("group_column", [] if group_column is None else [group_column]),
                        ("label_map", list(label_map or {})), ("label_bins", list(label_bins or {}))):
        for column in wanted:
            if column not in names:
                raise ValueError(f"{key}: {column!r} is not a named group of label_pattern ({known})")
    for column, mapping in (label_map or {}).items():
        if not isinstance(mapping, dict) or not mapping:
            raise ValueError(f"label_map: {column!r} must map each value to a class name or index, got {mapping!r}")
        kinds = {type(value) for value in mapping.values()}
        if not (kinds <= {str} or kinds <= {int}) or any(isinstance(v, int) and v < 0 for v in mapping.values()):
            raise ValueError(f"label_map: the classes of {column!r} must be all names or all indices >= 0")
    for column, edges in (label_bins or {}).items():
        if column in (label_map or {}):
            raise ValueError(f"label_bins: {column!r} is in label_map too; give it a map or bins, not both")
        if (not isinstance(edges, list) or not edges or not all(isinstance(e, (int, float)) for e in edges)
                or any(b <= a for a, b in zip(edges, edges[1:]))):
            raise ValueError(f"label_bins: {column!r} must be a list of increasing numbers, e.g. [30, 60], "
                             f"got {edges!r}")


def match_paths(regex: re.Pattern, relative_paths: Sequence[str], skip_unmatched: bool) -> tuple[list[int], list]:
    """(the positions of the paths the pattern matches, each one's {group: value}).

    A path it does not match is a DataError naming the file, or, with ``skip_unmatched``, left out
    with a warning.
    """
    keep, values, missed = [], [], []
    for i, path in enumerate(relative_paths):
        match = regex.search(path)
        if match is None or any(value is None for value in match.groupdict().values()):
            if not skip_unmatched:
                raise DataError(path, f"does not match label_pattern '{regex.pattern}' (set skip_unmatched: "
                                      "true to leave such files out)")
            missed.append(path)
            continue
        keep.append(i)
        values.append(match.groupdict())
    if missed:
        logger.warning("label_pattern: left out %d file(s) it does not match: %s%s", len(missed),
                       ", ".join(missed[:5]), ", ..." if len(missed) > 5 else "")
    return keep, values


def bin_names(edges: Sequence[float]) -> list[str]:
    """The class names of bins: ``[30, 60]`` gives ``<30``, ``30-59``, ``>=60`` (``30-<60`` for fractions)."""
    whole = all(float(edge).is_integer() for edge in edges)
    show = [f"{int(edge)}" if whole else f"{edge:g}" for edge in edges]
    middle = [f"{a}-{int(b) - 1}" if whole else f"{a}-<{b_}" for a, b, b_ in zip(show, edges[1:], show[1:])]
    return [f"<{show[0]}", *middle, f">={show[-1]}"]


def column_classes(column: str, values: list[str], paths: Sequence[str], label_map: dict | None,
                   label_bins: dict | None) -> tuple[list[int], list[str]]:
    """(each sample's class index, the class names) of one column, through its map or bins if it has one."""
    if column in (label_map or {}):
        mapping = label_map[column]
        for value, path in zip(values, paths):
            if value not in mapping:
                raise DataError(path, f"label_map.{column} has no entry for {value!r} (it maps "
                                      f"{', '.join(map(repr, list(mapping)[:8]))})")
        if all(isinstance(v, int) for v in mapping.values()):
            size = max(mapping.values()) + 1
            names = ["|".join(key for key, v in mapping.items() if v == k) or str(k) for k in range(size)]
            return [mapping[v] for v in values], names
        names = list(dict.fromkeys(mapping.values()))  # in the order the map names them
        return [names.index(mapping[v]) for v in values], names
    if column in (label_bins or {}):
        import numpy as np

        edges = label_bins[column]
        numbers = []
        for value, path in zip(values, paths):
            try:
                numbers.append(float(value))
            except ValueError:
                raise DataError(path, f"label_bins.{column}: {value!r} is not a number") from None
        indices, names = np.digitize(numbers, edges).tolist(), bin_names(edges)
        empty = [name for k, name in enumerate(names) if k not in set(indices)]
        if empty:  # a bin no file falls in: most likely edges on the wrong scale
            logger.warning("label_bins.%s: no file falls in the class(es) %s", column, ", ".join(empty))
        return indices, names
    if all(value.isdigit() for value in values):
        indices = [int(value) for value in values]
        return indices, [str(k) for k in range(max(indices) + 1)]
    names = sorted(set(values))
    return [names.index(v) for v in values], names


def labels_from_paths(relative_paths: Sequence[str], pattern: str, label_column, group_column, label_map,
                      label_bins, skip_unmatched: bool) -> tuple[list[int], list | None, list | None, list | None,
                                                              dict[str, list[str]]]:
    """(the positions of the files kept, their targets, the classes, their groups, the class names of each
    label column) from the paths' named groups.

    One ``label_column``: class indices and that column's class names. A list of them (MultiHead):
    one list of class indices per sample; the classes are the column names.
    """
    regex = compile_pattern(pattern)
    check_columns(regex, label_column, group_column, label_map, label_bins)
    keep, values = match_paths(regex, relative_paths, skip_unmatched)
    if not keep:
        raise DataError(f"label_pattern '{pattern}'", "matches none of the image files")
    kept_paths = [relative_paths[i] for i in keep]
    groups = [row[group_column] for row in values] if group_column is not None else None
    if label_column is None:
        return keep, None, None, groups, {}
    columns = label_column if isinstance(label_column, list) else [label_column]
    indices, names = {}, {}
    for column in columns:
        indices[column], names[column] = column_classes(column, [row[column] for row in values], kept_paths,
                                                        label_map, label_bins)
    if isinstance(label_column, list):
        return keep, [list(row) for row in zip(*(indices[c] for c in columns))], list(columns), groups, names
    return keep, indices[label_column], names[label_column], groups, names
