"""Regression metrics (selected by name from model/metric.py, which imports them).

Every one is exact over the epoch's samples and under DDP: a mean over samples is a function the
tracker weights by the batch size; anything else keeps running sums that are added over processes.
"""
import torch

from base import Metric


def _values(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    output = output.double().reshape(len(output), -1)
    return output, target.double().reshape(output.shape)


def mae(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (over samples, and over outputs for several)."""
    output, target = _values(output, target)
    return (output - target).abs().mean()


class SumsMetric(Metric):
    """A metric computed from running sums (tensors added batch by batch and over processes)."""

    def reset(self) -> None:
        self.sums = None

    def add(self, *sums: torch.Tensor) -> None:
        self.sums = list(sums) if self.sums is None else [a + b for a, b in zip(self.sums, sums)]

    def state(self) -> list[torch.Tensor]:
        return list(self.sums) if self.sums is not None else []

    def load_state(self, tensors: list[torch.Tensor]) -> None:
        self.sums = list(tensors) if tensors else None


class RMSE(SumsMetric):
    """Root of the mean squared error over every sample (and output) of the epoch, not a mean of batch RMSEs."""

    def update(self, output, target):
        output, target = _values(output, target)
        self.add(((output - target) ** 2).sum(), torch.tensor(float(output.numel()), dtype=torch.float64,
                                                             device=output.device))

    def compute(self) -> float:
        return (self.sums[0] / self.sums[1]).sqrt().item() if self.sums else float("nan")


class R2(SumsMetric):
    """Coefficient of determination, averaged over outputs as ``sklearn.metrics.r2_score`` does."""

    def update(self, output, target):
        output, target = _values(output, target)
        count = torch.full_like(target[0], float(len(target)))
        self.add(((output - target) ** 2).sum(0), target.sum(0), (target ** 2).sum(0), count)

    def compute(self) -> float:
        if not self.sums:
            return float("nan")
        squared_error, total, total_squares, count = self.sums
        variance_sum = total_squares - total ** 2 / count
        return (1 - squared_error / variance_sum).mean().item()
