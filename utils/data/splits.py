"""Splits that keep every group (a person, a patient, a video) on one side.

When several samples come from one group, a split by sample puts the group on both sides and the
validation score flatters the model. With ``dataset.groups`` set, the validation split and the
k-fold folds are drawn from scikit-learn's group-aware splitters instead:

- holdout: ``StratifiedGroupKFold`` (stratified) or ``GroupShuffleSplit``; one of its parts;
- k-fold: ``StratifiedGroupKFold`` (stratified) or ``GroupKFold``.
"""
import logging
from collections.abc import Sequence

import numpy as np
import torch

from utils.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def stratification_labels(task, dataset, n_bins: int = 10) -> np.ndarray | None:
    """What the validation split and k-fold stratify on: the task's labels of the dataset's targets
    (classes; a regression target's quantile bins; MultiHead's combined class), or None without targets.

    Examples:
        >>> labels = stratification_labels(config.init_obj("task"), dataset, config["kfold"]["n_bins"])
    """
    targets = getattr(dataset, "targets", None)
    if targets is None or len(targets) == 0:
        return None
    return np.asarray(task.stratify_labels(targets, n_bins))


def one_label_per_sample(labels) -> np.ndarray:
    """Labels as one class per sample: each distinct row of 2-D labels (multi-label) is one class."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels
    return np.unique(labels.reshape(len(labels), -1), axis=0, return_inverse=True)[1].reshape(-1)


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
        train, valid = next(splitter.split(np.zeros(n), one_label_per_sample(targets), codes))
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
    return list(splitter.split(np.zeros(len(codes)), None if targets is None else one_label_per_sample(targets),
                               codes))


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


def split_indices(dataset, validation_split, stratify: bool, split_seed: int,
                  group_split: bool = True, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """Dataset indices for training and validation. The split draws from its own generator.

    With ``dataset.groups`` (and ``group_split``), whole groups go to one side. ``labels`` are what a
    stratified split keeps in proportion (``stratification_labels``; default the dataset's targets).
    """
    n = len(dataset)
    if isinstance(validation_split, (list, tuple, np.ndarray, torch.Tensor)):
        valid = np.asarray(validation_split, dtype=np.int64)
        if valid.size and (valid.min() < 0 or valid.max() >= n):
            raise ValueError(f"validation_split: indices must lie in [0, {n}), the dataset's size")
        train = np.setdiff1d(np.arange(n), valid)
    else:
        n_valid = validation_count(validation_split, n)
        if n_valid == 0:
            return np.arange(n), np.arange(0)
        groups = getattr(dataset, "groups", None) if group_split else None
        if labels is None:
            labels = getattr(dataset, "targets", None)
        if stratify and labels is None:
            raise ValueError("stratify: needs a dataset with targets; set it to false")
        if groups is not None:
            train, valid = group_holdout(labels, groups, n_valid, stratify, split_seed)
        elif stratify:
            from sklearn.model_selection import train_test_split

            try:
                train, valid = train_test_split(
                    np.arange(n), test_size=n_valid, stratify=np.asarray(labels), random_state=split_seed
                )
            except ValueError as error:  # e.g. fewer validation samples than classes
                logger.warning("validation_split: a stratified split cannot be made (%s); using a random split",
                               str(error).rstrip("."))
                stratify = False
        if groups is None and not stratify:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).numpy()
            train, valid = order[n_valid:], order[:n_valid]
        train, valid = np.sort(train), np.sort(valid)
    if len(train) == 0:
        raise ValueError(f"validation_split: leaves no training data (the dataset has {n} samples)")
    return train, valid


def validation_count(validation_split: float | int, n: int) -> int:
    """How many of ``n`` samples a fraction or a count holds out."""
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)):
        raise ValueError(f"validation_split: must be a fraction, a count or a list, got {validation_split!r}")
    if isinstance(validation_split, int):
        if not 0 <= validation_split < n:
            raise ValueError(f"validation_split: a count must lie in [0, {n}), the dataset's size; "
                             f"got {validation_split}")
        return validation_split
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split: a fraction must lie in [0, 1), got {validation_split}")
    return max(1, round(n * validation_split)) if validation_split > 0 else 0
