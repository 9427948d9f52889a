"""``pseudo_labels``: unlabelled samples an ensemble is confident about, added to the training data.

    "pseudo_labels": {"csv": "saved/Big/0101_120000/test_probabilities.csv",
                      "dataset": {"type": "ImageDataset", "args": {"root": "data/test"}},
                      "threshold": 0.9, "soft": false, "weight": 0.5}

The CSV is ``inference.py --probabilities`` (or predictions.csv) of the unlabelled data the section's
dataset reads; each of that dataset's samples is looked up by its id. A sample whose largest class
probability reaches ``threshold`` is added, labelled with that class (or, with ``soft``, trained on the
probabilities themselves). The pseudo-labelled samples come after the dataset's own: the validation
split and the k-fold folds are drawn from the labelled part only (``labelled``), so they only ever
train, and in k-fold they join every fold's training part.
"""
import logging
from collections import Counter

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.config.components import build_transform
from utils.data.teacher import read_soft_labels
from utils.errors import DataError

logger = logging.getLogger(__name__)


class WithPseudoLabels(Dataset):
    """The labelled ``dataset`` followed by the samples ``chosen`` of ``unlabelled`` with their ``labels``.

    Every other attribute is the labelled dataset's; ``targets`` and ``sample_id`` cover both parts.
    """

    def __init__(self, dataset, unlabelled, chosen: list[int], labels: list[int]):
        self.dataset, self.unlabelled, self.chosen, self.labels = dataset, unlabelled, chosen, labels
        self.targets = [*dataset.targets, *labels]

    def __len__(self) -> int:
        return len(self.dataset) + len(self.chosen)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        if index < len(self.dataset):
            return self.dataset[key]
        j = index - len(self.dataset)
        data, _ = self.unlabelled[(self.chosen[j], seed) if seed is not None else self.chosen[j]]
        return data, self.labels[j]

    def sample_id(self, index: int):
        if index < len(self.dataset):
            return self.dataset.sample_id(index)
        return self.unlabelled.sample_id(self.chosen[index - len(self.dataset)])

    def __getattr__(self, name: str):
        if name in ("dataset", "unlabelled", "chosen", "labels", "targets"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _unlabelled_dataset(config):
    """The section's dataset; without transforms of its own it takes the "dataset" section's."""
    args = {}
    own = config["pseudo_labels"]["dataset"].get("args", {})
    for key in ("train_transform", "eval_transform"):
        inherited = config["dataset"].get("args", {}).get(key)
        if inherited and key not in own:
            args[key] = build_transform(inherited, f"dataset.args.{key}")
    return config.init_obj("pseudo_labels.dataset", **args)


def choose_pseudo_labels(config, dataset, num_classes: int) -> tuple[WithPseudoLabels, torch.Tensor]:
    """(the training data with the confident unlabelled samples added, their class probabilities).

    Examples:
        >>> combined, probs = choose_pseudo_labels(config, DigitsDataset(), num_classes=10)
    """
    section = config["pseudo_labels"]
    path = section["csv"]
    rows, values, columns = read_soft_labels(path, "pseudo_labels.csv")
    expected = [f"prob_{k}" for k in range(num_classes)]
    if columns != expected:
        raise DataError("pseudo_labels.csv", f"{path} must have the class probabilities prob_0 ... "
                                             f"prob_{num_classes - 1} of the model's {num_classes} classes, it has "
                                             f"{', '.join(columns[:4])}{', ...' if len(columns) > 4 else ''}")
    unlabelled = _unlabelled_dataset(config)
    positions = []
    for j in range(len(unlabelled)):
        row = rows.get(str(unlabelled.sample_id(j)))
        if row is None:
            raise DataError("pseudo_labels.csv", f"{path} has no row for sample {unlabelled.sample_id(j)!r} of "
                                                 "pseudo_labels.dataset (predict that dataset to make the CSV)")
        positions.append(row)
    probs = values[positions] if positions else np.zeros((0, num_classes))
    chosen = np.flatnonzero(probs.max(axis=1) >= section["threshold"]) if len(probs) else np.zeros(0, dtype=int)
    labels = probs[chosen].argmax(axis=1).tolist()
    log_counts(labels, len(unlabelled), section["threshold"], getattr(dataset, "classes", None))
    combined = WithPseudoLabels(dataset, unlabelled, chosen.tolist(), labels)
    return combined, torch.as_tensor(probs[chosen], dtype=torch.float32).reshape(len(chosen), num_classes)


def log_counts(labels: list[int], total: int, threshold: float, classes=None) -> None:
    """Log how many samples were added, per class."""
    counts = Counter(labels)
    per_class = ", ".join(f"{classes[k] if classes is not None else k}: {counts[k]}" for k in sorted(counts))
    logger.info("pseudo_labels: added %d of %d unlabelled samples (largest probability >= %s) per class: %s",
                len(labels), total, threshold, per_class or "none")
