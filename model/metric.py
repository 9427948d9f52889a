"""Metrics, selected by name in the config's "metrics" list.

Two kinds, both exact over every sample of an epoch:
- a function ``fn(output, target) -> Tensor`` returning the mean over the batch's samples; the
  tracker weights it by the batch size (accuracy, top-k accuracy);
- a ``Metric`` subclass with running totals, for what is not a mean over samples (macro F1).
"""
import torch

from base import Metric, confusion_matrix
from model.metric_multilabel import MeanAveragePrecision, MultilabelF1, subset_accuracy
from model.metric_regression import R2, RMSE, mae

# The regression and multi-label metrics live in model/metric_regression.py and model/metric_multilabel.py;
# these are their config names.
rmse, r2, mean_average_precision = RMSE, R2, MeanAveragePrecision
__all__ = ["accuracy", "top_k_acc", "MacroF1", "mae", "rmse", "r2", "MultilabelF1", "subset_accuracy",
           "mean_average_precision"]


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose highest-scoring class is the target."""
    return (output.argmax(dim=1) == target).float().mean()


def top_k_acc(output: torch.Tensor, target: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Fraction of samples whose target is among the ``k`` highest-scoring classes."""
    top_k = output.topk(min(k, output.shape[1]), dim=1).indices
    return (top_k == target.unsqueeze(1)).any(dim=1).float().mean()


class MacroF1(Metric):
    """The F1 score of each class, averaged over classes, from the epoch's confusion matrix.

    Classes that appear neither as a target nor as a prediction are left out of the average, and a
    class with no true positives scores 0, as ``sklearn.metrics.f1_score(average="macro")`` does.
    """

    def __init__(self, num_classes: int | None = None):
        self.num_classes = num_classes
        super().__init__()

    def reset(self) -> None:
        self.confusion = None

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        counts = confusion_matrix(output, target, self.num_classes)
        self.confusion = counts if self.confusion is None else self.confusion + counts

    def state(self) -> list[torch.Tensor]:
        return [self.confusion] if self.confusion is not None else []

    def load_state(self, tensors: list[torch.Tensor]) -> None:
        self.confusion = tensors[0] if tensors else None

    def compute(self) -> float:
        if self.confusion is None:
            return float("nan")
        confusion = self.confusion.double()
        true_positive = confusion.diag()
        support, predicted = confusion.sum(dim=1), confusion.sum(dim=0)
        f1 = 2 * true_positive / (support + predicted).clamp(min=1)
        present = (support + predicted) > 0
        return f1[present].mean().item()
