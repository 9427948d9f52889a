"""Epoch metrics computed exactly over samples: running sums on the device, one reduction per epoch.

Nothing here reads a value back to the host during the epoch, so tracking costs no GPU sync per batch.
Under DistributedDataParallel every running sum is added over the processes before the result.
"""
from collections.abc import Callable

import torch

from utils.dist import all_reduce_sum


class Metric:
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

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def state(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def load_state(self, tensors: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def compute(self) -> float:
        raise NotImplementedError


class MeanMetric(Metric):
    """The sample-weighted mean of a per-batch mean, e.g. ``accuracy(output, target)``.

    ``fn`` must return the mean over the batch's samples; weighting it by the batch size makes the
    epoch value exact, also with an uneven last batch.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.fn = fn
        super().__init__()

    def reset(self) -> None:
        self.total = self.count = None

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.add(self.fn(output, target), len(target))

    def add(self, batch_mean: torch.Tensor, n: int) -> None:
        weighted = batch_mean.detach().double() * n
        if self.total is None:
            self.total, self.count = weighted, torch.full_like(weighted, n)
        else:
            self.total += weighted
            self.count += n

    def state(self) -> list[torch.Tensor]:
        return [self.total, self.count] if self.total is not None else []

    def load_state(self, tensors: list[torch.Tensor]) -> None:
        self.total, self.count = tensors if tensors else (None, None)

    def compute(self) -> float:
        return (self.total / self.count).item() if self.total is not None else float("nan")


class MetricTracker:
    """The loss and the metrics of one epoch, each exact over all its samples.

    Examples:
        >>> tracker = MetricTracker({"accuracy": accuracy})
        >>> tracker.update(loss, output, target)      # per batch: no host sync
        >>> tracker.result(prefix="val_")             # once per epoch
        {'val_loss': 0.12, 'val_accuracy': 0.97}
    """

    def __init__(self, metrics: dict[str, Metric | Callable]):
        self.loss = MeanMetric(fn=None)
        self.metrics = {name: m if isinstance(m, Metric) else MeanMetric(m) for name, m in metrics.items()}

    def reset(self) -> None:
        self.loss.reset()
        for metric in self.metrics.values():
            metric.reset()

    def update(self, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> None:
        self.loss.add(loss, len(target))
        for metric in self.metrics.values():
            metric.update(output, target)

    def _all(self) -> dict[str, Metric]:
        return {"loss": self.loss, **self.metrics}

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {name: [t.cpu() for t in metric.state()] for name, metric in self._all().items()}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]], device: torch.device) -> None:
        for name, metric in self._all().items():
            metric.load_state([t.to(device) for t in state.get(name, [])])

    def result(self, prefix: str = "") -> dict[str, float]:
        """Every value of the epoch, summed over all processes first; one host sync."""
        for metric in self._all().values():
            for tensor in metric.state():
                all_reduce_sum(tensor)
        return {prefix + name: metric.compute() for name, metric in self._all().items()}
