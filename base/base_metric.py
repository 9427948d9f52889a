"""The base of metrics with running totals, and the confusion matrix the engine and metrics share."""
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F


def confusion_matrix(output: torch.Tensor, target: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Counts of (target, predicted class) pairs, rows the targets, as a matrix product of one-hot codes.

    Unlike ``torch.bincount``, this needs no host sync on CUDA and is deterministic.
    """
    num_classes = num_classes or output.shape[1]
    predicted = F.one_hot(output.argmax(dim=1), num_classes).float()
    actual = F.one_hot(target.long(), num_classes).float()
    return (actual.T @ predicted).round().long()



class Metric(ABC):
    """A metric over every sample of an epoch, accumulated in summable tensors.

    Subclass it for metrics that are not a mean over samples (F1, AUC, ...): keep running totals in
    tensors, list them in ``state()``, and compute the value from them. Under DDP the tracker sums
    each state tensor over the processes before ``compute()``.

    Examples:
        >>> class ErrorCount(Metric):
        ...     def reset(self):
        ...         self.errors = None
        ...     def update(self, output, target):
        ...         wrong = (output.argmax(1) != target).sum()
        ...         self.errors = wrong if self.errors is None else self.errors + wrong
        ...     def state(self):
        ...         return [self.errors]
        ...     def load_state(self, tensors):
        ...         self.errors = tensors[0]
        ...     def compute(self):
        ...         return float(self.errors)
    """

    def __init__(self):
        self.reset()

    @abstractmethod
    def reset(self) -> None:
        """Start a new epoch: clear the running totals."""

    @abstractmethod
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch, on the device, without a host sync."""

    @abstractmethod
    def state(self) -> list[torch.Tensor]:
        """The running totals, as tensors to sum over processes (and to checkpoint mid-epoch)."""

    @abstractmethod
    def load_state(self, tensors: list[torch.Tensor]) -> None:
        """Restore what ``state()`` returned (after summing it over processes, or from a checkpoint)."""

    def sync(self) -> None:
        """Under DDP, before ``compute()``: add each running total over the processes (every process calls it)."""
        from utils.distributed import all_reduce_sum

        self.load_state([all_reduce_sum(tensor) for tensor in self.state()])

    @abstractmethod
    def compute(self) -> float:
        """The epoch's value from the running totals."""
