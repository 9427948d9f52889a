"""Tasks, selected by the config's "task" section: what the targets mean.

    "task": "Regression"
    "task": {"type": "MultiHead", "args": {"heads": {"mask": 3, "gender": 2, "age": 3}}}

A task decides how targets are collated and checked, how outputs become predictions and
predictions.csv columns, which pictures TensorBoard gets, what k-fold stratifies on and how the
out-of-fold predictions are read back. Add your own by subclassing ``BaseTask`` here (see README,
"Tasks"). ``MultiHead`` is in model/multihead.py.
"""
import json
from pathlib import Path

import numpy as np
import torch

from base.base_task import BaseTask
from model.multihead import MultiHead
from utils.errors import ConfigError, DataError
from utils.recipe.distillation import binary_kl, squared_error

__all__ = ["Classification", "Regression", "MultiLabel", "MultiHead"]


class Classification(BaseTask):
    """One class per sample: logits of C classes, class-index targets (the default task)."""


def _rows(dataset) -> list:
    return list(dataset.targets) if dataset.targets is not None else []


class Regression(BaseTask):
    """One number (or K numbers) per sample; the model returns K values, no activation.

    predictions.csv has ``prediction`` (``prediction_<k>`` for K > 1) and ``target`` (``target_<k>``)
    when known; TensorBoard draws the validation predictions against the true values.
    """

    target_kind = "value"
    max_points = 5000  # points of the scatter image, from the first validation samples

    def prepare_target(self, target):
        target = super().prepare_target(target)
        return target.float().reshape(len(target), -1)

    def combine(self, outputs):
        return outputs[0] if len(outputs) == 1 else torch.stack([o.float() for o in outputs]).mean(dim=0)

    def soft_target_loss(self, output, teacher, temperature):
        """Distillation of a regression: the squared error to the teacher's predictions (no temperature)."""
        return squared_error(output, teacher)

    def known_targets(self, targets):
        return torch.isfinite(targets.reshape(len(targets), -1)).all(dim=1)

    def check_labels(self, dataset, num_outputs, where):
        for row, value in enumerate(_rows(dataset)):
            values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
            try:
                numbers = [float(v) for v in values]
            except (TypeError, ValueError):
                raise DataError(f"sample {dataset.sample_id(row)}", f"target {value!r} is not a number") from None
            if not all(np.isfinite(numbers)):
                raise DataError(f"sample {dataset.sample_id(row)}", f"target {value!r} is not a finite number")
            if num_outputs is not None and len(numbers) != num_outputs:
                raise DataError(f"sample {dataset.sample_id(row)}", f"has {len(numbers)} target values but "
                                                                    f"{where} is {num_outputs}")

    def predictions_table(self, outputs, targets, classes=None):
        values = outputs.float().reshape(len(outputs), -1).cpu().numpy()
        table = _columns("prediction", values)
        if targets is not None:
            table |= _columns("target", targets.float().reshape(len(targets), -1).cpu().numpy())
        return table

    def output_probabilities(self, output):
        return {"prediction": output}  # values, no activation

    def outputs_from_table(self, table):
        outputs = table.filter(regex=r"^prediction(_\d+)?$").to_numpy()
        targets = table.filter(regex=r"^target(_\d+)?$").to_numpy()
        return torch.tensor(outputs, dtype=torch.float32), torch.tensor(targets, dtype=torch.float32)

    def stratify_labels(self, targets, n_bins=10):
        """Quantile bins of the (first) target: each fold sees the whole range of values."""
        values = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)[:, 0]
        edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
        return np.digitize(values, edges)

    def figure_update(self, state, output, target):
        pairs = state or []
        if sum(len(o) for o, _ in pairs) < self.max_points:
            pairs.append((output[:, 0].detach().float(), target[:, 0].float()))
        return pairs

    def figure_reduce(self, state):
        return None if not state else [(torch.cat([o for o, _ in state]), torch.cat([t for _, t in state]))]

    def record_figures(self, tensorboard, state, classes, tag, step, max_classes=50):
        from logger.visualization import scatter_image

        predicted, true = state[0]
        image = scatter_image(true.cpu().numpy(), predicted.cpu().numpy())
        tensorboard.add_image(f"val/predicted_vs_true_{tag}", image, step)


def _columns(name: str, values: np.ndarray) -> dict:
    if values.shape[1] == 1:
        return {name: values[:, 0]}
    return {f"{name}_{k}": values[:, k] for k in range(values.shape[1])}


class MultiLabel(BaseTask):
    """Any number of C labels per sample: C logits, a 0/1 target vector.

    Args:
        thresholds: the probability above which a label is predicted: one for all labels or one
            per label. kfold_train.py tunes one per label on the OOF predictions
            (oof_thresholds.json), which inference.py on the k-fold directory uses.
    """

    target_kind = "labels"

    def __init__(self, thresholds: float | list[float] = 0.5):
        values = thresholds if isinstance(thresholds, list) and thresholds else [thresholds]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
            raise ConfigError("task.args.thresholds", f"must be a probability in [0, 1] or a list of them (one per "
                                                      f"label), got {thresholds!r}")
        self.thresholds = thresholds

    def threshold_tensor(self, device=None) -> torch.Tensor:
        return torch.as_tensor(self.thresholds, dtype=torch.float32, device=device)

    def prepare_target(self, target):
        return super().prepare_target(target).float()

    def wrap_metrics(self, metrics):
        for metric in metrics.values():  # F1 and the like use the task's thresholds unless given their own
            if getattr(metric, "threshold", 0) is None:
                metric.threshold = self.thresholds
        return metrics

    def soft_target_loss(self, output, teacher, temperature):
        """Distillation per label: the binary KL divergence to the teacher's label probabilities, at T."""
        return binary_kl(output, teacher, temperature)

    def combine(self, outputs):
        if len(outputs) == 1:
            return outputs[0]
        probs = torch.stack([o.float().sigmoid() for o in outputs]).mean(dim=0).clamp(1e-7, 1 - 1e-7)
        return probs.log() - (-probs).log1p()  # back to logits

    def known_targets(self, targets):
        return (targets.reshape(len(targets), -1) >= 0).all(dim=1)

    def check_labels(self, dataset, num_outputs, where):
        for row, value in enumerate(_rows(dataset)):
            values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else None
            if values is None or any(v not in (0, 1) for v in values):
                raise DataError(f"sample {dataset.sample_id(row)}", f"target {value!r} is not a list of 0/1 "
                                                                    "values (one per label)")
            if num_outputs is not None and len(values) != num_outputs:
                raise DataError(f"sample {dataset.sample_id(row)}", f"has {len(values)} labels but {where} is "
                                                                    f"{num_outputs}")

    def predictions_table(self, outputs, targets, classes=None):
        probs = outputs.float().sigmoid().cpu().numpy()
        names = [str(c) for c in classes] if classes is not None else [str(k) for k in range(probs.shape[1])]
        chosen = probs >= self.threshold_tensor().numpy()
        table = {"prediction": [" ".join(n for n, on in zip(names, row) if on) for row in chosen]}
        if targets is not None:
            table["target"] = [" ".join(n for n, on in zip(names, row) if on) for row in targets.cpu().numpy() > 0.5]
        return table | {f"prob_{name}": probs[:, k] for k, name in enumerate(names)}

    def output_probabilities(self, output):
        return {"probabilities": output.sigmoid()}  # one per label; the thresholds stay outside the model

    def outputs_from_table(self, table):
        names = [c[len("prob_"):] for c in table.columns if c.startswith("prob_")]
        probs = torch.tensor(table[[f"prob_{n}" for n in names]].to_numpy()).clamp(1e-7, 1 - 1e-7)
        tags = table["target"].fillna("").astype(str).str.split()
        targets = torch.tensor([[float(n in row) for n in names] for row in tags])
        return probs.log() - (-probs).log1p(), targets

    def stratify_labels(self, targets, n_bins=10):
        return np.asarray(targets, dtype=np.int64)  # a 0/1 matrix: iterative stratification

    def fit_oof(self, outputs, targets, run_dir):
        """One threshold per label, the one that maximizes that label's F1 on the OOF predictions."""
        from sklearn.metrics import precision_recall_curve

        probs, truth = outputs.double().sigmoid().numpy(), targets.numpy() > 0.5
        thresholds = []
        for k in range(probs.shape[1]):
            if not truth[:, k].any():
                thresholds.append(0.5)
                continue
            precision, recall, cuts = precision_recall_curve(truth[:, k], probs[:, k])
            f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
            cut = cuts[int(f1.argmax())]
            below = probs[:, k][probs[:, k] < cut]
            # Halfway to the next lower score: the same samples pass, whatever the rounding of the scores.
            thresholds.append(float((cut + below.max()) / 2 if below.size else cut / 2))
        self.thresholds = thresholds
        (Path(run_dir) / "oof_thresholds.json").write_text(json.dumps(thresholds, indent=4))

    def load_run(self, run_dir):
        path = Path(run_dir) / "oof_thresholds.json"
        if path.is_file():
            self.thresholds = json.loads(path.read_text())

    def figure_update(self, state, output, target):
        return None
