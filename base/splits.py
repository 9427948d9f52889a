"""Splits that keep every group (a person, a patient, a video) on one side.

When several samples come from one group, a split by sample puts the group on both sides and the
validation score flatters the model. With ``dataset.groups`` set, the validation split and the
k-fold folds are drawn from scikit-learn's group-aware splitters instead:

- holdout: ``StratifiedGroupKFold`` (stratified) or ``GroupShuffleSplit``; one of its parts;
- k-fold: ``StratifiedGroupKFold`` (stratified) or ``GroupKFold``.
"""
from collections.abc import Sequence

import numpy as np

from utils.errors import ConfigError, DataError


def group_codes(groups: Sequence) -> np.ndarray:
    """Each sample's group as an integer code (groups may be any hashable values)."""
    if len(groups) == 0:
        return np.zeros(0, dtype=np.int64)
    _, codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    return codes


def check_group_sizes(groups: Sequence, n_parts: int, where: str) -> None:
    """A DataError for fewer groups than parts, or a group larger than one part."""
    names, counts = np.unique(np.asarray([str(g) for g in groups]), return_counts=True)
    if len(names) < n_parts:
        raise DataError(where, f"the data has {len(names)} groups, fewer than the {n_parts} parts to split "
                               "into: use fewer folds or a smaller validation part, or turn group splitting off")
    part = len(groups) / n_parts
    largest = int(counts.argmax())
    name, size = str(names[largest]), int(counts[largest])
    if size > part:
        raise DataError(where, f"group {name!r} has {size} samples, more than one of the "
                               f"{n_parts} parts ({part:.0f} samples): use fewer folds or a smaller validation "
                               "part, or turn group splitting off")


def group_holdout(targets, groups: Sequence, n_valid: int, stratify: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices that keep whole groups on one side, about ``n_valid`` of them validation.

    Stratified: the first fold of a shuffled ``StratifiedGroupKFold`` with ``round(n / n_valid)``
    folds (as close to the class proportions as whole groups allow). Otherwise ``GroupShuffleSplit``
    with that fraction of the groups.
    """
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    n = len(groups)
    n_parts = max(2, round(n / n_valid))
    check_group_sizes(groups, n_parts, "data_loader.args.validation_split")
    codes = group_codes(groups)
    if stratify:
        splitter = StratifiedGroupKFold(n_splits=n_parts, shuffle=True, random_state=seed)
        train, valid = next(splitter.split(np.zeros(n), np.asarray(targets), codes))
    else:
        splitter = GroupShuffleSplit(n_splits=1, test_size=n_valid / n, random_state=seed)
        train, valid = next(splitter.split(np.zeros(n), groups=codes))
    return np.sort(train), np.sort(valid)


def group_folds(targets, groups: Sequence, n_splits: int, stratified: bool, shuffle: bool, seed: int) -> list:
    """[(train, held-out)] per fold, every group held out by exactly one fold."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    check_group_sizes(groups, n_splits, "kfold.n_splits")
    codes = group_codes(groups)
    random_state = seed if shuffle else None
    if stratified:
        if targets is None:
            raise ConfigError("kfold.stratified", "the dataset has no targets to stratify by; set it to false")
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=shuffle, random_state=random_state)
    else:
        splitter = GroupKFold(n_splits=n_splits, shuffle=shuffle, random_state=random_state)
    return list(splitter.split(np.zeros(len(codes)), None if targets is None else np.asarray(targets), codes))


def describe_folds(folds: list, groups: Sequence, stratified: bool) -> str:
    """One log line: the group-aware splitter of k-fold and the groups each fold holds out."""
    codes = group_codes(groups)
    splitter = "StratifiedGroupKFold" if stratified else "GroupKFold"
    held = ", ".join(str(len(np.unique(codes[held_out]))) for _, held_out in folds)
    return f"k-fold by groups ({splitter}): {codes.max() + 1} groups, held out per fold: {held}"


def describe_split(dataset, train: np.ndarray, valid: np.ndarray, splitter: str) -> str | None:
    """One log line: the validation split's splitter and how many groups went to each side (None without groups)."""
    groups = getattr(dataset, "groups", None)
    if groups is None or len(valid) == 0:
        return None
    codes = group_codes(groups)
    train_groups, valid_groups = set(codes[train].tolist()), set(codes[valid].tolist())
    return (f"validation split ({splitter}): {len(train_groups)} groups ({len(train)} samples) for training, "
            f"{len(valid_groups)} groups ({len(valid)} samples) for validation, "
            f"{len(train_groups & valid_groups)} groups on both sides")


def holdout_splitter(dataset, validation_split, stratify: bool, group_split: bool) -> str:
    """The name of what draws the validation split, for the log."""
    if isinstance(validation_split, (list, tuple, np.ndarray)):
        return "the given indices (k-fold)"
    if group_split and getattr(dataset, "groups", None) is not None:
        return "StratifiedGroupKFold" if stratify else "GroupShuffleSplit"
    return "train_test_split, stratified" if stratify else "random by sample"
