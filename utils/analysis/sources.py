"""What ``analyze.py`` reads: predictions with labels, from a CSV, a k-fold directory or a training run.

A training run's validation split is predicted by the caller (``predict``: the script reuses
inference.py), which hands back the CSV it wrote; a k-fold directory has its out-of-fold predictions
in ``oof_predictions.csv``. The CSV is read with float32 probabilities, so 100,000 rows of 100
classes take 40 MB.
"""
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.errors import DataError

CLASS_PROB = re.compile(r"^prob_(\d+)$")


@dataclass
class Predictions:
    """One RUN's predictions: the table and what the analysis needs from it.

    ``kind`` is "classification", "multilabel", "multihead" or "regression"; ``probs`` (N x C float32)
    and integer ``targets`` are set for classification; ``run_dir`` is where ``calibration.json`` goes
    (None for a bare CSV), ``config`` and ``curves`` (metrics.csv per run or fold) come with it.
    """

    name: str
    source: Path
    kind: str
    table: object  # pandas.DataFrame
    run_dir: Path | None = None
    config: dict | None = None
    curves: list = field(default_factory=list)
    probs: np.ndarray | None = None
    targets: np.ndarray | None = None
    classes: list[str] | None = None
    fitted_on: str = "predictions"
    analysis: dict = field(default_factory=dict)

    @property
    def ids(self) -> np.ndarray:
        return self.table["id"].to_numpy()


def task_kind(columns: list[str], task_type: str | None = None) -> str:
    """The kind of predictions a table holds: from the run's task when known, else from its columns."""
    by_task = {"Regression": "regression", "MultiLabel": "multilabel", "MultiHead": "multihead",
               "Classification": "classification"}
    if task_type in by_task:
        return by_task[task_type]
    probs = [c for c in columns if c.startswith("prob_")]
    if not probs:
        return "regression"
    if all(CLASS_PROB.match(c) for c in probs):
        return "classification"
    return "multihead" if any(c.startswith("target_") for c in columns) else "multilabel"


def read_predictions(path: str | Path, name: str | None = None, task_type: str | None = None,
                     progress: bool = False) -> Predictions:
    """A predictions CSV with labels (columns ``id, prediction, target, prob_k``... as inference.py writes).

    Examples:
        >>> predictions = read_predictions("saved/Digits/20261127_120000/oof_predictions.csv")
        >>> predictions.probs.shape
        (1437, 10)
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "no such predictions file, training run or k-fold directory")
    try:
        columns = list(pd.read_csv(path, nrows=0).columns)
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(str(path), f"is not a CSV file: {error}") from None
    if "id" not in columns or not any(c == "target" or c.startswith("target_") for c in columns):
        raise DataError(str(path), "needs the columns id and target (labels), as inference.py --split valid "
                                   f"and oof_predictions.csv have; it has {', '.join(columns[:8])}")
    kind = task_kind(columns, task_type)
    dtypes = {c: "float32" for c in columns if c.startswith("prob_")} | {"id": str}
    if kind == "multilabel":
        dtypes |= {"target": str, "prediction": str}
    try:
        chunks = pd.read_csv(path, dtype=dtypes, engine="c", keep_default_na=kind != "multilabel", chunksize=20000)
        table = list(tqdm(chunks, desc=f"reading {path.name}", unit=" x 20,000 rows", leave=False, delay=1,
                          disable=not progress))
    except ValueError as error:
        raise DataError(str(path), f"cannot be read: {error}") from None
    if not table or not sum(map(len, table)):
        raise DataError(str(path), "has no predictions")
    table = pd.concat(table, ignore_index=True)
    predictions = Predictions(name or path.stem, path, kind, table)
    if kind == "classification":
        _class_columns(predictions)
    return predictions


def _class_columns(predictions: Predictions) -> None:
    table, path = predictions.table, predictions.source
    prob_columns = sorted((c for c in table.columns if CLASS_PROB.match(c)), key=lambda c: int(c[5:]))
    targets = table["target"].to_numpy()
    if not np.issubdtype(targets.dtype, np.integer) or (targets < 0).any() or targets.max() >= len(prob_columns):
        raise DataError(f"{path}: target", f"must hold class indices 0 to {len(prob_columns) - 1} (every sample "
                                           "labelled)")
    predictions.probs = np.ascontiguousarray(table[prob_columns].to_numpy(dtype=np.float32))
    predictions.table = table.drop(columns=prob_columns)  # the probabilities are held once, in ``probs``
    predictions.targets = targets.astype(np.int64)
    names = [str(k) for k in range(len(prob_columns))]
    if "prediction_name" in table.columns:
        for index, label in zip(table["prediction"].to_numpy(), table["prediction_name"].astype(str).to_numpy()):
            names[int(index)] = label  # every predicted class names itself; unpredicted ones keep their index
    predictions.classes = names


def is_kfold_dir(path: Path) -> bool:
    return (path / "oof_predictions.csv").is_file() or any(path.glob("fold_*/config.json"))


def is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / name).is_file() for name in ("model_best.pth",
                                                                                            "last.pth"))


def load_source(target: str | Path, predict: Callable[[Path], Path], progress: bool = False) -> Predictions:
    """The predictions of a RUN: a CSV, a k-fold directory (its OOF predictions) or a training run
    (``predict(run_dir)`` predicts its validation split and returns the CSV)."""
    path = Path(target)
    config, task_type = None, None
    if path.is_dir() and (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        task = config.get("task") or "Classification"
        task_type = task if isinstance(task, str) else task.get("type")
    if path.is_dir() and is_kfold_dir(path):
        if not (path / "oof_predictions.csv").is_file():
            raise DataError(str(path), "has no oof_predictions.csv: the k-fold run did not finish (resume it "
                                       "with kfold_train.py -r)")
        predictions = read_predictions(path / "oof_predictions.csv", _run_name(path), task_type, progress)
        predictions.fitted_on = "out-of-fold predictions"
        # A k-fold run's curves are its folds'; a fold directory (it has its held-out predictions) has its own.
        folders = sorted(path.glob("fold_*")) or [path]
        predictions.curves = [folder / "metrics.csv" for folder in folders if (folder / "metrics.csv").is_file()]
    elif path.is_dir() and is_run_dir(path):
        predictions = read_predictions(predict(path), _run_name(path), task_type, progress)
        predictions.fitted_on = "validation split"
        predictions.curves = [path / "metrics.csv"] if (path / "metrics.csv").is_file() else []
    elif path.is_dir():
        raise DataError(str(path), "is neither a training run (config.json and a checkpoint) nor a k-fold run")
    else:
        return read_predictions(path, path.stem, progress=progress)
    predictions.run_dir, predictions.config = path, config
    return predictions


def _run_name(path: Path) -> str:
    """<config name>/<run id>: run ids are timestamps, the same in two configs' folders."""
    path = path.resolve()
    return f"{path.parent.name}/{path.name}"
