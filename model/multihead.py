"""The MultiHead task: several single-label heads on one model output (see model/task.py)."""
import copy
import math

import numpy as np
import torch

from base.base_metric import Metric
from base.base_task import BaseTask
from base.metric_tracker import MeanMetric
from utils.errors import ConfigError, DataError
from utils.recipe.distillation import softmax_kl


class MultiHead(BaseTask):
    """Several single-label heads: the model returns their logits side by side.

    Args:
        heads: {head name: number of classes}, in the order of the model's output columns.
        weights: {head name: weight of its loss} (1 for heads not named).

    The config's loss is applied per head and summed with the weights. Every metric is reported
    per head as ``<metric>_<head>`` and on the combined class as ``<metric>``: the heads read as
    the digits of one number, in the order given (heads 3, 2, 3: class 2·6 + 1·3 + 0 = 15 for
    digits 2, 1, 0).

    Examples:
        >>> "task": {"type": "MultiHead", "args": {"heads": {"mask": 3, "gender": 2, "age": 3},
        ...                                         "weights": {"age": 2.0}}}
    """

    target_kind = "heads"

    def __init__(self, heads: dict[str, int], weights: dict[str, float] | None = None):
        if not isinstance(heads, dict) or not heads or not all(isinstance(n, int) and n > 1 for n in heads.values()):
            raise ConfigError("task.args.heads", f"must map each head's name to its number of classes (2 or "
                                                 f"more), e.g. {{\"age\": 3}}, got {heads!r}")
        if weights is not None and not isinstance(weights, dict):
            raise ConfigError("task.args.weights", f"must map head names to weights, e.g. {{\"age\": 2.0}}, got "
                                                   f"{weights!r}")
        unknown = set(weights or {}) - set(heads)
        if unknown:
            raise ConfigError("task.args.weights", f"names no head: {', '.join(sorted(unknown))}")
        for name, weight in (weights or {}).items():
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not 0 <= weight < math.inf:
                raise ConfigError(f"task.args.weights.{name}", f"must be a number, 0 or more (a negative weight "
                                                               f"drives its loss up), got {weight!r}")
        if weights and heads.keys() <= weights.keys() and not any(weights.values()):
            raise ConfigError("task.args.weights", "are all 0: no head would be trained")
        self.heads = dict(heads)
        self.weights = [float((weights or {}).get(name, 1.0)) for name in heads]
        sizes = list(self.heads.values())
        self.slices = [slice(sum(sizes[:i]), sum(sizes[:i + 1])) for i in range(len(sizes))]
        # The combined class: each head's digit times the product of the sizes after it.
        self.strides = [math.prod(sizes[i + 1:]) for i in range(len(sizes))]

    @property
    def num_outputs(self) -> int:
        return sum(self.heads.values())

    def prepare_target(self, target):
        target = super().prepare_target(target)
        return target.long().reshape(len(target), -1)

    def head_logits(self, output: torch.Tensor) -> list[torch.Tensor]:
        return [output[:, s] for s in self.slices]

    def combined_target(self, target: torch.Tensor) -> torch.Tensor:
        return (target * torch.as_tensor(self.strides, device=target.device)).sum(dim=1)

    def combined_logits(self, output: torch.Tensor) -> torch.Tensor:
        """log p(combined class) = the sum of the heads' log-probabilities: its argmax is the heads' digits."""
        total = None
        for logits in self.head_logits(output):
            log_probs = logits.float().log_softmax(dim=1)
            total = log_probs if total is None else (total.unsqueeze(2) + log_probs.unsqueeze(1)).flatten(1)
        return total

    def wrap_loss(self, criterion):
        return HeadsLoss(criterion, self)

    def soft_target_loss(self, output, teacher, temperature):
        """Distillation per head (the teacher's ``prob_<head>_<k>`` columns), summed with the heads' weights."""
        return sum(weight * softmax_kl(output[:, s], teacher[:, s], temperature)
                   for s, weight in zip(self.slices, self.weights))

    def wrap_metrics(self, metrics):
        wrapped = {}
        for name, metric in metrics.items():
            wrapped[name] = HeadMetric(metric, self, None)
            wrapped |= {f"{name}_{head}": HeadMetric(metric, self, i) for i, head in enumerate(self.heads)}
        return wrapped

    def metric_columns(self, names):
        return [column for name in names for column in (name, *(f"{name}_{head}" for head in self.heads))]

    def check_labels(self, dataset, num_outputs, where):
        if num_outputs is not None and num_outputs != self.num_outputs:
            raise ConfigError(where, f"is {num_outputs}, but the heads {self.heads} need {self.num_outputs} outputs")
        for row, value in enumerate(dataset.targets or []):
            values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
            if len(values) != len(self.heads):
                raise DataError(f"sample {dataset.sample_id(row)}", f"target {value!r} has {len(values)} values, "
                                                                    f"one per head is {len(self.heads)}")
            for (head, size), v in zip(self.heads.items(), values):
                if not float(v).is_integer() or not 0 <= v < size:
                    raise DataError(f"sample {dataset.sample_id(row)}", f"class {v!r} of head {head!r} does not "
                                                                        f"lie in [0, {size})")

    def combine(self, outputs):
        if len(outputs) == 1:
            return outputs[0]
        return torch.cat([BaseTask.combine(self, [o[:, s] for o in outputs]) for s in self.slices], dim=1)

    def known_targets(self, targets):
        return (targets.reshape(len(targets), -1) >= 0).all(dim=1)

    def predictions_table(self, outputs, targets, classes=None):
        table = {"prediction": self.combined_logits(outputs).argmax(dim=1).cpu().numpy()}
        if targets is not None:
            table["target"] = self.combined_target(targets).cpu().numpy()
        probs = [logits.float().softmax(dim=1).cpu().numpy() for logits in self.head_logits(outputs)]
        for head, p in zip(self.heads, probs):
            table[f"prediction_{head}"] = p.argmax(axis=1)
        if targets is not None:
            table |= {f"target_{head}": targets[:, i].cpu().numpy() for i, head in enumerate(self.heads)}
        for head, p in zip(self.heads, probs):
            table |= {f"prob_{head}_{k}": p[:, k] for k in range(p.shape[1])}
        return table

    def output_probabilities(self, output):
        return {f"probabilities_{head}": logits.softmax(dim=1)
                for head, logits in zip(self.heads, self.head_logits(output))}

    def outputs_from_table(self, table):
        columns = [f"prob_{head}_{k}" for head, size in self.heads.items() for k in range(size)]
        probs = torch.tensor(table[columns].to_numpy()).clamp_min(1e-12).log()
        targets = torch.tensor(table[[f"target_{head}" for head in self.heads]].to_numpy())
        return probs.float(), targets

    def stratify_labels(self, targets, n_bins=10):
        return self.combined_target(torch.as_tensor(np.asarray(targets, dtype=np.int64))).numpy()

    def figure_update(self, state, output, target):
        return None


class HeadsLoss:
    """The config's loss applied to each head and summed with the heads' weights."""

    def __init__(self, criterion, task: MultiHead):
        self.criterion, self.task = criterion, task

    def __call__(self, output, target):
        total = 0.0
        for i, (logits, weight) in enumerate(zip(self.task.head_logits(output), self.task.weights)):
            total = total + weight * self.criterion(logits, target[:, i])
        return total


class HeadMetric(Metric):
    """A classification metric on one head (``head`` its index) or on the combined class (None)."""

    def __init__(self, metric, task: MultiHead, head: int | None):
        self.inner = copy.deepcopy(metric) if isinstance(metric, Metric) else MeanMetric(metric)
        self.task, self.head = task, head
        super().__init__()

    def reset(self) -> None:
        self.inner.reset()

    def update(self, output, target):
        if self.head is None:
            self.inner.update(self.task.combined_logits(output), self.task.combined_target(target))
        else:
            self.inner.update(output[:, self.task.slices[self.head]], target[:, self.head])

    def state(self):
        return self.inner.state()

    def load_state(self, tensors):
        self.inner.load_state(tensors)

    def sync(self):
        self.inner.sync()

    def compute(self):
        return self.inner.compute()
