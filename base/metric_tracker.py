"""Epoch metrics computed exactly over samples: running sums on the device, one reduction per epoch.

Nothing here reads a value back to the host during the epoch, so tracking costs no GPU sync per batch.
Under DistributedDataParallel every running sum is added over the processes before the result.
"""
import copy
from collections.abc import Callable

import torch

from base.base_metric import Metric
from utils.data.train_targets import plain_target
from utils.distributed import is_distributed


class MeanMetric(Metric):
    """The sample-weighted mean of a per-batch mean, e.g. ``accuracy(output, target)``.

    ``fn`` must return the mean over the batch's samples; weighting it by the batch size makes the
    epoch value exact, also with an uneven last batch.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.fn = fn
        super().__init__()

    def reset(self) -> None:
        self.total, self.count = None, 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.add(self.fn(output, target), len(target))

    def add(self, batch_mean: torch.Tensor, n: int) -> None:
        """Add the mean of ``n`` samples."""
        self.add_total(batch_mean.detach() * n, n)

    def add_total(self, total: torch.Tensor, n: int) -> None:
        """Add the sum over ``n`` samples."""
        self.total = total.double() if self.total is None else self.total + total  # the count stays on the host
        self.count += n

    def state(self) -> list[torch.Tensor]:
        if self.total is None:
            return []
        return [self.total, torch.tensor(float(self.count), dtype=torch.float64, device=self.total.device)]

    def load_state(self, tensors: list[torch.Tensor]) -> None:
        self.total, self.count = (tensors[0], int(tensors[1].item())) if tensors else (None, 0)

    def compute(self) -> float:
        return (self.total / self.count).item() if self.total is not None else float("nan")


class MetricTracker:
    """The loss and the metrics of one epoch, each exact over all its samples.

    Batches wait in a short queue and are scored together (up to 16 at a time, fewer for large
    outputs): a few large kernels instead of many small ones per batch. The queue is part of
    ``state_dict()``, so an epoch resumed in the middle groups its batches exactly as before.

    Examples:
        >>> tracker = MetricTracker({"accuracy": accuracy})
        >>> tracker.update(loss, output, target)      # per batch: no host sync
        >>> tracker.result(prefix="val_")             # once per epoch
        {'val_loss': 0.12, 'val_accuracy': 0.97}
    """

    queue_elements = 1 << 20  # at most this many output values wait in the queue

    def __init__(self, metrics: dict[str, Metric | Callable]):
        self.loss = MeanMetric(fn=None)
        # Metric objects are copied: the training and the validation tracker each need their own totals.
        self.metrics = {name: copy.deepcopy(m) if isinstance(m, Metric) else MeanMetric(m)
                        for name, m in metrics.items()}
        self.queue = []

    def reset(self) -> None:
        self.queue = []
        for metric in self._all().values():
            metric.reset()

    def update(self, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> None:
        target = plain_target(target)  # the true labels, without a teacher's (utils/data/train_targets.py)
        self.queue.append((loss.detach(), output.detach(), target))
        if len(self.queue) >= min(16, max(1, self.queue_elements // max(1, output.numel()))):
            self.flush()

    def flush(self) -> None:
        """Score the queued batches."""
        if not self.queue:
            return
        losses, outputs, targets = zip(*self.queue)
        self.queue = []
        counts = [len(t) for t in targets]
        if all(n == counts[0] for n in counts):
            loss_total = torch.stack(losses).double().sum() * counts[0]
        else:  # an uneven last batch: weight each loss by its own batch size
            loss_total = sum(loss.double() * n for loss, n in zip(losses, counts))
        self.loss.add_total(loss_total, sum(counts))
        output, target = (outputs[0], targets[0]) if len(outputs) == 1 else (torch.cat(outputs), torch.cat(targets))
        for metric in self.metrics.values():
            metric.update(output, target)

    def _all(self) -> dict[str, Metric]:
        return {"loss": self.loss, **self.metrics}

    def state_dict(self) -> dict:
        return {"metrics": {name: [t.cpu() for t in metric.state()] for name, metric in self._all().items()},
                "queue": [tuple(t.cpu() for t in batch) for batch in self.queue]}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        for name, metric in self._all().items():
            metric.load_state([t.to(device) for t in state["metrics"].get(name, [])])
        self.queue = [tuple(t.to(device) for t in batch) for batch in state["queue"]]

    def result(self, prefix: str = "", sync: bool = True) -> dict[str, float]:
        """Every value of the epoch. With ``sync`` (under DDP, every process must call it then) the
        running totals are summed over all processes first."""
        self.flush()
        if sync and is_distributed():
            for metric in self._all().values():
                metric.sync()
        return {prefix + name: metric.compute() for name, metric in self._all().items()}


class Scorer:
    """The config's loss and metrics (as the task adapts them) over predictions given batch by batch,
    exact over samples. ``loss_args`` replace the config's loss arguments: the checkpoint's
    "balanced" class weights.

    Examples:
        >>> scorer = Scorer(config)
        >>> for outputs, targets in predict_batches([model], loader, device):
        ...     scorer.update(outputs, targets)
        >>> scorer.result()
        {'loss': 0.05, 'accuracy': 0.986}
    """

    def __init__(self, config, task=None, loss_args: dict | None = None):
        task = task if task is not None else config.task
        self.tracker = MetricTracker(task.wrap_metrics(config.init_metrics()))
        self.criterion = task.wrap_loss(config.init_ftn("loss", **(loss_args or {})))

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.tracker.update(self.criterion(outputs, targets), outputs, targets)

    def result(self) -> dict:
        return self.tracker.result(sync=False)


def score(config, outputs: torch.Tensor, targets: torch.Tensor, task=None,
          loss_args: dict | None = None) -> dict:
    """The config's loss and metrics over a set of predictions held in memory (see ``Scorer``)."""
    scorer = Scorer(config, task, loss_args)
    scorer.update(outputs, targets)
    return scorer.result()
