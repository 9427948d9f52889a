"""Soft labels from a predictions CSV, matched to samples by id: the teacher of the ``distillation``
loss, and the labels of ``pseudo_labels``.

A teacher CSV is k-fold's oof_predictions.csv (every training sample, predicted by a model that never
saw it) or ``inference.py --probabilities`` of a model or an ensemble. Its soft labels are the
``prob_*`` columns (classes, labels, or ``prob_<head>_<k>``), or a regression's ``prediction*``
values. ``build_extras`` wires both features into the training data (see utils/data/train_targets.py).
"""
import logging
from pathlib import Path

import numpy as np
import torch

from utils.data.train_targets import ExtrasDataset, ExtrasLoss, ExtrasMixer, ExtrasTask
from utils.errors import ConfigError, DataError
from utils.predict import probability_columns

logger = logging.getLogger(__name__)


def read_soft_labels(path: str, where: str) -> tuple[dict[str, int], np.ndarray, list[str]]:
    """({id as text: row}, the soft labels (rows, columns), the column names) of a predictions CSV.

    Examples:
        >>> rows, values, columns = read_soft_labels("saved/Big/0101_120000/oof_predictions.csv", "loss.args.teacher")
    """
    import pandas as pd

    if not Path(path).is_file():
        raise ConfigError(where, f"{path}: no such file")
    try:
        table = pd.read_csv(path, dtype={"id": str})
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise DataError(path, f"cannot read it as a CSV file: {error}") from None
    if "id" not in table:
        raise DataError(path, "has no 'id' column: write it with inference.py --probabilities, or use k-fold's "
                              "oof_predictions.csv")
    columns = [name for name in probability_columns({name: None for name in table.columns}) if name != "id"]
    if not columns:
        raise DataError(path, "has no soft labels: no prob_* columns (nor a regression's prediction columns)")
    try:
        values = table[columns].to_numpy(dtype=np.float64)
    except ValueError:
        raise DataError(path, f"its columns {', '.join(columns[:3])}... must hold numbers") from None
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad.size:
        raise DataError(path, f"the row of id {table['id'][bad[0]]!r} has a value that is not a finite number")
    ids = table["id"].tolist()
    rows = {sample_id: row for row, sample_id in enumerate(ids)}
    if len(rows) != len(ids):
        twice = table["id"][table["id"].duplicated()].iloc[0]
        raise DataError(path, f"id {twice!r} has more than one row")
    return rows, values, columns


def teacher_rows(path: str, dataset, width: int, where: str = "loss.args.teacher") -> torch.Tensor:
    """The teacher's soft labels of each sample of ``dataset``, by its id (a row of NaN where the CSV
    has none: ``check_rows`` then names the first training sample without one)."""
    rows, values, columns = read_soft_labels(path, where)
    if values.shape[1] != width:
        raise DataError(where, f"{path} has {values.shape[1]} soft-label columns ({', '.join(columns[:4])}"
                               f"{', ...' if len(columns) > 4 else ''}), but the model has {width} outputs")
    table = torch.full((len(dataset), width), float("nan"))
    found = [(i, rows.get(str(dataset.sample_id(i)))) for i in range(len(dataset))]
    found = [(i, row) for i, row in found if row is not None]
    if found:
        positions, source = zip(*found)
        table[list(positions)] = torch.as_tensor(values[list(source)], dtype=torch.float32)
    return table


class TrainingExtras:
    """What ``build_extras`` made: the wrapped training dataset and the wrappers of the task, the loss
    and the mixer (see utils/data/train_targets.py)."""

    def __init__(self, dataset: ExtrasDataset, alpha: float | None, temperature: float, weighted: bool,
                 teacher_path: str | None):
        self.dataset, self.alpha, self.temperature, self.weighted = dataset, alpha, temperature, weighted
        self.teacher_path = teacher_path

    def check_rows(self, train_indices) -> None:
        """A DataError naming the first training sample the teacher CSV has no row for."""
        if self.alpha is None:
            return
        missing = torch.isnan(self.dataset.teacher[torch.as_tensor(np.asarray(train_indices), dtype=torch.long)])
        missing = missing.any(dim=1).nonzero()
        if len(missing):
            index = int(np.asarray(train_indices)[int(missing[0])])
            raise DataError("loss.args.teacher", f"{self.teacher_path} has no row for training sample "
                                                 f"{self.dataset.sample_id(index)!r} (the CSV's ids must be "
                                                 "the dataset's sample ids)")

    def wrap(self, task, criterion):
        """(the task, the loss) the trainer gets."""
        return ExtrasTask(task), ExtrasLoss(criterion, task, self.alpha, self.temperature, self.weighted)

    def wrap_mixer(self, mixer):
        return ExtrasMixer(mixer) if mixer is not None else None


def build_extras(config, dataset, num_outputs: int | None, single_label: bool) -> TrainingExtras | None:
    """The training data with the ``distillation`` teacher's rows and ``pseudo_labels``, or None
    when the config uses neither.

    Examples:
        >>> extras = build_extras(config, dataset, num_outputs=10, single_label=True)
        >>> loader = config.init_data_loader("data_loader", dataset=extras.dataset)
    """
    loss, pseudo = config["loss"], config["pseudo_labels"]
    distill = loss["args"] if isinstance(loss, dict) and loss["type"] == "distillation" else None
    if distill is None and pseudo is None:
        return None
    from utils.data.pseudo_labels import choose_pseudo_labels  # it reads its CSV with read_soft_labels

    num_outputs = num_outputs or getattr(dataset, "num_classes", None)
    if num_outputs is None:
        raise ConfigError("arch.args.num_classes", "is needed to read soft labels (the model's number of outputs)")
    labelled, probs = dataset, None
    if pseudo is not None:
        if not single_label:
            raise ConfigError("pseudo_labels", "needs a single-label classification task (prob_0 ... prob_{C-1})")
        dataset, probs = choose_pseudo_labels(config, dataset, num_outputs)
    teacher = torch.zeros(len(dataset), 0)
    if distill is not None:
        teacher = teacher_rows(distill["teacher"], labelled, num_outputs)
        if probs is not None:  # the pseudo-labelled samples learn from the ensemble that labelled them
            teacher = torch.cat([teacher, probs])
    soft = torch.zeros(len(dataset), 0)
    if pseudo is not None and pseudo["soft"]:
        known = torch.as_tensor(np.asarray(labelled.targets), dtype=torch.long)
        soft = torch.cat([torch.nn.functional.one_hot(known, num_outputs).float(), probs])
    weights = torch.ones(len(dataset))
    if pseudo is not None:
        weights[len(labelled):] = pseudo["weight"]
    wrapped = ExtrasDataset(dataset, teacher, soft, weights, labelled=labelled)
    weighted = pseudo is not None and pseudo["weight"] != 1
    return TrainingExtras(wrapped, distill["alpha"] if distill else None, distill["temperature"] if distill else 1.0,
                          weighted, distill["teacher"] if distill else None)
