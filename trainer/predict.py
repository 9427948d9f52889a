"""Predictions of one model or an ensemble, with test-time augmentation, and the predictions CSV."""
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from base.base_task import BaseTask
from base.metric_tracker import MetricTracker
from utils.util import autocast, to_device


@torch.inference_mode()
def predict(models: Sequence[torch.nn.Module], loader, device: torch.device, amp_dtype=None,
            tta: Sequence[Callable] = (), channels_last: bool = False,
            task: BaseTask | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model outputs for every sample of ``loader``, in order, and the targets.

    With one model and no TTA the outputs are the model's own (logits), so losses and metrics
    computed from them equal those of validation. Otherwise the task combines them (``task.combine``):
    for classification the log of the class probabilities averaged over the models and over the views
    (the batch itself, then each TTA transform applied to it), which a loss like cross-entropy still
    reads correctly; for regression the mean of the values.
    """
    task = task if task is not None else BaseTask()
    for model in models:
        model.eval()
    outputs, targets = [], []
    for data, target in loader:
        data = to_device(data, device, channels_last)
        views = [data, *(transform(data) for transform in tta)]
        with autocast(device, amp_dtype):
            output = task.combine([model(view).float() for model in models for view in views]).float()
        outputs.append(output)
        targets.append(task.prepare_target(to_device(target, device)))
    return torch.cat(outputs), torch.cat(targets)


def write_predictions(path: str | Path, ids: Sequence, outputs: torch.Tensor, targets: torch.Tensor | None = None,
                      classes: Sequence[str] | None = None, task: BaseTask | None = None) -> None:
    """Write ``id`` and the task's columns: for classification ``prediction, [prediction_name,] [target,]
    prob_0 ... prob_{C-1}`` (SPEC section 4).

    ``targets`` is left out when the labels are unknown (None, or every target is -1).
    """
    import pandas as pd

    task = task if task is not None else BaseTask()
    known = targets is not None and bool(task.known_targets(targets).any())
    table = {"id": list(ids)} | task.predictions_table(outputs, targets if known else None, classes)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table).to_csv(path, index=False)


def score(config, outputs: torch.Tensor, targets: torch.Tensor, task: BaseTask | None = None) -> dict:
    """The config's loss and metrics over a set of predictions, exact over samples: {"loss": ..., name: ...}.

    Examples:
        >>> score(config, *predict([model], loader, device))
        {'loss': 0.05, 'accuracy': 0.986}
    """
    task = task if task is not None else config.init_obj("task")
    tracker = MetricTracker(task.wrap_metrics(config.init_metrics()))
    tracker.update(task.wrap_loss(config.init_ftn("loss"))(outputs, targets), outputs, targets)
    return tracker.result(sync=False)
