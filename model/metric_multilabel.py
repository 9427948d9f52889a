"""Multi-label metrics (selected by name from model/metric.py, which imports them).

Each is exact over the epoch's samples and under DDP: running sums are added over processes, and
average precision gathers every score of the epoch.
"""
import torch

from base import Metric
from model.metric_regression import SumsMetric


class MultilabelF1(SumsMetric):
    """F1 of each label, averaged over labels (``sklearn.metrics.f1_score(average="macro")``).

    A label is predicted when its probability reaches the threshold: this metric's ``threshold``, else
    the task's (MultiLabel's ``thresholds``, 0.5 by default). A label with no true and no predicted
    sample scores 0, as scikit-learn's.
    """

    def __init__(self, threshold: float | list[float] | None = None):
        self.threshold = threshold
        super().__init__()

    def update(self, output, target):
        threshold = torch.as_tensor(0.5 if self.threshold is None else self.threshold, device=output.device)
        predicted, actual = output.float().sigmoid() >= threshold, target > 0.5
        self.add((predicted & actual).sum(0), (predicted & ~actual).sum(0), (~predicted & actual).sum(0))

    def compute(self) -> float:
        if not self.sums:
            return float("nan")
        true_positive, false_positive, false_negative = (s.double() for s in self.sums)
        f1 = 2 * true_positive / (2 * true_positive + false_positive + false_negative).clamp(min=1)
        return f1.mean().item()


def subset_accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose every label is right (a label is predicted at probability 0.5 or more)."""
    return ((output >= 0) == (target > 0.5)).all(dim=1).float().mean()


class MeanAveragePrecision(Metric):
    """Average precision of each label, averaged over labels (``sklearn.metrics.average_precision_score``).

    It needs every score of the epoch: they are kept on the device and gathered over processes.
    """

    def reset(self) -> None:
        self.outputs, self.targets = [], []

    def update(self, output, target):
        self.outputs.append(output.detach().float())
        self.targets.append(target.float())

    def state(self) -> list[torch.Tensor]:
        return [torch.cat(self.outputs), torch.cat(self.targets)] if self.outputs else []

    def load_state(self, tensors):
        self.outputs, self.targets = ([tensors[0]], [tensors[1]]) if tensors else ([], [])

    def sync(self) -> None:
        from utils.distributed import gather_objects

        shards = gather_objects([t.cpu() for t in self.state()])
        self.load_state([torch.cat(parts) for parts in zip(*[s for s in shards if s])] if any(shards) else [])

    def compute(self) -> float:
        if not self.outputs:
            return float("nan")
        scores, target = torch.cat(self.outputs), torch.cat(self.targets) > 0.5
        order = scores.argsort(dim=0, descending=True, stable=True)
        hits = target.gather(0, order).double()
        precision_at = hits.cumsum(0) / torch.arange(1, len(hits) + 1, device=hits.device).unsqueeze(1)
        # Ties share a precision in scikit-learn: use the precision at the last sample of each tie.
        sorted_scores = scores.gather(0, order)
        tie_end = torch.ones_like(sorted_scores, dtype=torch.bool)
        tie_end[:-1] = sorted_scores[1:] != sorted_scores[:-1]
        precision = _fill_back(precision_at, tie_end)
        positives = hits.sum(0)
        ap = (precision * hits).sum(0) / positives.clamp(min=1)
        return ap[positives > 0].mean().item()


def _fill_back(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Each value replaced by the next kept value below it in its column (keep's last row is True)."""
    index = torch.arange(len(values), device=values.device).unsqueeze(1).expand_as(values)
    index = torch.where(keep, index, torch.full_like(index, len(values)))
    nxt = index.flip(0).cummin(0).values.flip(0)
    return values.gather(0, nxt)
