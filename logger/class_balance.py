"""The class balance report at the start of a run: samples per class in the training and
validation splits, as a short table in the log and a bar image in TensorBoard."""
import logging

import numpy as np

logger = logging.getLogger(__name__)


def class_counts(targets, indices, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(targets)[np.asarray(indices, dtype=np.int64)], minlength=num_classes)


def class_balance_table(train_counts, valid_counts, names) -> str:
    """A short text table: one row per class with its training and validation counts and shares."""
    width = max([len("class"), *(len(str(name)) for name in names)]) + 1  # whole names: they may share a prefix
    lines = [f"{'class':<{width}}{'train':>8}{'%':>7}{'valid':>8}{'%':>7}"]
    train_total, valid_total = max(int(train_counts.sum()), 1), max(int(valid_counts.sum()), 1)
    for name, train, valid in zip(names, train_counts, valid_counts):
        lines.append(f"{str(name):<{width}}{train:>8}{100 * train / train_total:>6.1f}%"
                     f"{valid:>8}{100 * valid / valid_total:>6.1f}%")
    return "\n".join(lines)


def class_balance_image(train_counts, valid_counts, names, height: int = 160, bar: int = 10):
    """Bars of the training (blue) and validation (orange) count of each class, as a CHW uint8 image."""
    from PIL import Image, ImageDraw

    n, label_height, group = len(names), 14, 2 * bar + 8
    image = Image.new("RGB", (8 + n * group, height + label_height), "white")
    draw = ImageDraw.Draw(image)
    top = max(int(train_counts.max(initial=0)), int(valid_counts.max(initial=0)), 1)
    for i, name in enumerate(names):
        x = 4 + i * group
        for j, (count, color) in enumerate(((train_counts[i], (31, 119, 180)), (valid_counts[i], (255, 127, 14)))):
            bar_height = round((height - 4) * count / top)
            draw.rectangle([x + j * bar, height - bar_height, x + (j + 1) * bar - 1, height], fill=color)
        draw.text((x, height + 1), str(name)[:3], fill="black")
    return np.asarray(image).transpose(2, 0, 1).copy()


def report_class_balance(data_loader, tensorboard=None) -> None:
    """Log the groups per side, the table, and add the bar image to TensorBoard.

    The table and image need class indices; regression, multi-label and multi-head data have none here.
    """
    from utils.data.splits import describe_split

    dataset, train_indices, valid_indices = data_loader.dataset, data_loader.train_indices, data_loader.valid_indices
    groups_line = describe_split(dataset, train_indices, valid_indices, getattr(data_loader, "splitter", "?"))
    if groups_line:
        logger.info(groups_line)
    targets = getattr(dataset, "targets", None)
    if targets is None or len(targets) == 0:
        return
    targets = np.asarray(targets)
    if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer) or targets.min() < 0:
        return  # regression, multi-label, multi-head: their task reports them
    num_classes = int(targets.max()) + 1
    names = list(dataset.classes) if dataset.classes is not None else [str(c) for c in range(num_classes)]
    num_classes = max(num_classes, len(names))
    train = class_counts(targets, train_indices, num_classes)
    valid = class_counts(targets, valid_indices, num_classes)
    logger.info("class balance (samples per class; the largest class has %.1fx the smallest in training):\n%s",
                train.max() / max(train.min(), 1), class_balance_table(train, valid, names))
    if tensorboard is not None:
        tensorboard.add_image("data/class_balance", class_balance_image(train, valid, names), 0)


def split_summary(data_loader) -> str:
    """The validation split in a few lines (``--dry-run`` prints it): its size, the groups and the classes
    on each side. Samples with several labels (multi-head, multi-label) count by their combination."""
    from utils.data.splits import describe_split, one_label_per_sample

    dataset, train, valid = data_loader.dataset, data_loader.train_indices, data_loader.valid_indices
    splitter = getattr(data_loader, "splitter", "?")
    lines = [describe_split(dataset, train, valid, splitter)
             or f"validation split ({splitter}): {len(train)} training, {len(valid)} validation samples"]
    targets = getattr(dataset, "targets", None)
    if targets is None or len(targets) == 0 or len(valid) == 0:
        return "\n".join(lines)
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu" or targets.min() < 0:
        return "\n".join(lines)  # regression values: no classes to count
    keys = one_label_per_sample(targets)
    if targets.ndim == 1:
        names = list(dataset.classes or [])
        names = names if len(names) > keys.max() else [str(k) for k in range(keys.max() + 1)]
    else:
        rows = np.unique(targets.reshape(len(targets), -1), axis=0)
        columns = [getattr(dataset, "label_classes", {}).get(column) for column in dataset.classes or []]
        if len(columns) == rows.shape[1] and all(columns):  # class names per column, read from paths
            names = ["/".join(str(names[v]) for names, v in zip(columns, row)) for row in rows]
        else:
            names = ["/".join(map(str, row)) for row in rows]
    lines.append(class_balance_table(class_counts(keys, train, len(names)), class_counts(keys, valid, len(names)),
                                     names))
    return "\n".join(lines)
