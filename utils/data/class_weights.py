"""Class weights of the loss: ``"class_weights": "balanced"`` resolved from the training split.

The weights are those of scikit-learn's ``compute_class_weight("balanced")``:
``n_samples / (n_classes * count[c])``. They are computed once, from the training part only (the
validation part never leaks into them), logged, and stored in the checkpoint as ``loss_args``, so
that resuming and inference build exactly the loss the run trained with.
"""
import logging

import numpy as np

from utils.errors import ConfigError, DataError

logger = logging.getLogger(__name__)
WEIGHT_ARGS = ("class_weights", "pos_weight")  # the loss arguments that may say "balanced"


def balanced_class_weights(targets, num_classes: int) -> list[float]:
    """``compute_class_weight("balanced")`` over the classes 0 .. num_classes - 1.

    Examples:
        >>> balanced_class_weights([0, 0, 0, 1], 2)
        [0.6666666666666666, 2.0]
    """
    from sklearn.utils.class_weight import compute_class_weight

    targets = np.asarray(targets)
    counts = np.bincount(targets, minlength=num_classes)
    if (counts == 0).any():
        missing = int(np.flatnonzero(counts == 0)[0])
        raise DataError("loss.args.class_weights", f"'balanced' needs every class in the training split, but "
                                                   f"class {missing} has no training sample")
    classes = np.arange(num_classes)
    return compute_class_weight("balanced", classes=classes, y=targets).tolist()


def balanced_pos_weight(targets) -> list[float]:
    """For multi-label targets (n_samples x n_labels of 0/1): negatives / positives per label."""
    targets = np.asarray(targets, dtype=np.float64)
    positives = targets.sum(axis=0)
    if (positives == 0).any():
        label = int(np.flatnonzero(positives == 0)[0])
        raise DataError("loss.args.pos_weight", f"'balanced' needs a positive sample of every label, but label "
                                                f"{label} has none in the training split")
    return ((len(targets) - positives) / positives).tolist()


def loss_args_from_data(config, dataset, train_indices, num_classes: int | None) -> dict:
    """The loss arguments that replace ``"balanced"`` (``{}`` when there is none to replace)."""
    spec = config["loss"]
    args = {} if isinstance(spec, str) else spec.get("args", {})
    resolved = {}
    for name in WEIGHT_ARGS:
        value = args.get(name)
        if isinstance(value, str) and value != "balanced":
            raise ConfigError(f"loss.args.{name}", f"must be a list of numbers or 'balanced', got {value!r}")
        if value != "balanced":
            continue
        if getattr(dataset, "targets", None) is None:
            raise ConfigError(f"loss.args.{name}", "'balanced' needs a dataset with targets")
        targets = np.asarray(dataset.targets)[np.asarray(train_indices)]
        if name == "pos_weight":
            resolved[name] = balanced_pos_weight(targets)
        else:
            resolved[name] = balanced_class_weights(targets, num_classes or int(targets.max()) + 1)
        logger.info("loss.args.%s 'balanced' (from %d training samples): %s", name, len(targets),
                    ", ".join(f"{w:.4g}" for w in resolved[name]))
    return resolved
