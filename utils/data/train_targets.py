"""Per-sample extras of the training data: a teacher's soft labels (the ``distillation`` loss) and a
loss weight (pseudo-labelled samples), carried with each training sample's target.

The training dataset is wrapped so that each sample's target becomes ``TrainTarget(target, teacher,
weight)``; the DataLoader collates that into one per batch, so a batch's extras always belong to its
own samples, whatever the shuffle, the process (DDP) or the point a resumed epoch starts from. The
batch loop itself is unchanged: the task wrapper prepares the three parts, the mixer wrapper mixes
the extras with the same pairs and lambda as the inputs, the metric tracker scores the true target,
and the loss wrapper reads the extras. Validation, out-of-fold and test data are never wrapped: their
targets stay plain, and the loss on them is the base loss on the true labels.
"""
from collections.abc import Callable
from typing import NamedTuple

import torch

from utils.errors import ConfigError


class TrainTarget(NamedTuple):
    """A training sample's (or batch's) target with its extras.

    ``teacher``: the teacher's soft labels (probabilities; a regression teacher's values), width 0
    without distillation. ``soft``: the class probabilities the loss takes instead of ``target``
    (soft pseudo-labels; a one-hot row for labelled samples), width 0 otherwise. ``weight``: the
    sample's loss weight (1, or ``pseudo_labels.weight``).
    """

    target: object
    teacher: torch.Tensor
    soft: torch.Tensor
    weight: torch.Tensor


def plain_target(target):
    """The true target of a batch, with or without extras (what the metrics score)."""
    return target.target if isinstance(target, TrainTarget) else target


class ExtrasDataset(torch.utils.data.Dataset):
    """A training dataset whose targets carry per-sample extras (see ``TrainTarget``).

    ``teacher`` and ``soft`` hold one row per sample (width 0 when unused; a teacher row of NaN where
    there is none: such a sample may not train); ``weights`` one loss weight per sample. Every other attribute is the wrapped dataset's; its
    ``evaluation()`` view (validation, predictions) is the wrapped dataset's own, without extras.
    ``labelled`` is the part the validation split and k-fold may draw from (see base_data_loader.py).

    Examples:
        >>> dataset = ExtrasDataset(DigitsDataset(), teacher=rows, soft=torch.zeros(len(rows), 0),
        ...                         weights=torch.ones(len(rows)))
        >>> data, target = dataset[0]           # target: TrainTarget(label, teacher row, soft row, weight)
    """

    def __init__(self, dataset, teacher: torch.Tensor, soft: torch.Tensor, weights: torch.Tensor, labelled=None):
        self.dataset, self.teacher, self.soft, self.weights = dataset, teacher, soft, weights
        self.labelled = labelled if labelled is not None else dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        data, target = self.dataset[key]
        return data, TrainTarget(target, self.teacher[index], self.soft[index], self.weights[index])

    def evaluation(self):
        return self.labelled.evaluation()

    def __getattr__(self, name: str):
        if name in ("dataset", "teacher", "soft", "weights", "labelled"):  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ExtrasTask:
    """The run's task, preparing a ``TrainTarget``'s parts; plain targets go to the task as they are."""

    def __init__(self, task):
        self.task = task

    def prepare_target(self, target):
        if not isinstance(target, TrainTarget):
            return self.task.prepare_target(target)
        return TrainTarget(self.task.prepare_target(target.target), target.teacher.float(), target.soft.float(),
                           target.weight.float())

    def __getattr__(self, name: str):
        if name == "task":
            raise AttributeError(name)
        return getattr(self.task, name)


class ExtrasMixer:
    """``trainer.mixup`` on a batch with extras: the teacher's soft labels, the soft pseudo-labels and
    the weights are mixed with the same pairs and lambda as the inputs and the labels (see
    ``BatchMixer.__call__``)."""

    def __init__(self, mixer):
        self.mixer = mixer

    def __call__(self, data, target, epoch: int, batch_idx: int):
        if not isinstance(target, TrainTarget):
            return self.mixer(data, target, epoch, batch_idx)
        widths = [target.teacher.shape[1], target.soft.shape[1], 1]
        rows = torch.cat([target.teacher, target.soft, target.weight.unsqueeze(1)], dim=1)
        data, mixed, rows = self.mixer(data, target.target, epoch, batch_idx, rows=rows)
        teacher, soft, weight = rows.split(widths, dim=1)
        return data, TrainTarget(mixed, teacher, soft, weight.squeeze(1))


class ExtrasLoss:
    """The loss of a training batch with extras; a plain batch gets ``base`` alone.

    ``alpha * base(output, target) + (1 - alpha) * soft`` where ``target`` is the batch's labels (its
    ``soft`` rows with soft pseudo-labels) and ``soft`` the task's
    ``soft_target_loss`` against the teacher at ``temperature`` (Hinton's T² scaling included there);
    without a teacher (``alpha`` None) just ``base``. With ``weighted``, each sample's losses are
    multiplied by its weight before the plain mean over the batch (the base loss is then computed per
    sample, with ``torch.vmap``).
    """

    def __init__(self, base: Callable, task, alpha: float | None = None, temperature: float = 1.0,
                 weighted: bool = False):
        self.base, self.task, self.alpha, self.temperature, self.weighted = base, task, alpha, temperature, weighted

    def __call__(self, output: torch.Tensor, target) -> torch.Tensor:
        if not isinstance(target, TrainTarget):
            return self.base(output, target)
        true = target.soft if target.soft.shape[1] else target.target
        if self.weighted:
            hard = (self._per_sample_base(output, true) * target.weight).mean()
        else:
            hard = self.base(output, true)
        if self.alpha is None or self.alpha == 1:  # no teacher, or exactly the base loss (and its gradient)
            return hard
        soft = self.task.soft_target_loss(output, target.teacher, self.temperature)
        if self.weighted:
            soft = soft * target.weight
        return self.alpha * hard + (1 - self.alpha) * soft.mean()

    def _per_sample_base(self, output: torch.Tensor, target) -> torch.Tensor:
        def one(sample_output, sample_target):
            return self.base(sample_output.unsqueeze(0), sample_target.unsqueeze(0))

        try:
            return torch.vmap(one)(output, target)
        except Exception as error:  # a loss torch.vmap cannot batch: a config problem, said once
            raise ConfigError("pseudo_labels.weight", f"weighs each sample's loss, but the loss cannot be computed "
                                                      f"per sample ({type(error).__name__}: {error}); set it to "
                                                      "1.0") from None
