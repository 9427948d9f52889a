"""Predictions of one model or an ensemble, with test-time augmentation, and the predictions CSV."""
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from base.metric_tracker import MetricTracker
from utils.util import autocast, to_device


@torch.inference_mode()
def predict(models: Sequence[torch.nn.Module], loader, device: torch.device, amp_dtype=None,
            tta: Sequence[Callable] = (), channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The model outputs for every sample of ``loader``, in order, and the targets.

    With one model and no TTA the outputs are the model's own (logits), so losses and metrics
    computed from them equal those of validation. Otherwise they are the log of the class
    probabilities averaged over the models and over the views (the batch itself, then each TTA
    transform applied to it): a loss like cross-entropy still reads them correctly.
    """
    for model in models:
        model.eval()
    outputs, targets = [], []
    for data, target in loader:
        data = to_device(data, device, channels_last)
        views = [data, *(transform(data) for transform in tta)]
        with autocast(device, amp_dtype):
            if len(models) == 1 and len(views) == 1:
                output = models[0](data).float()
            else:
                probs = [model(view).float().softmax(dim=1) for model in models for view in views]
                output = torch.stack(probs).mean(dim=0).clamp_min(1e-12).log()
        outputs.append(output)
        targets.append(target.to(device))
    return torch.cat(outputs), torch.cat(targets)


def write_predictions(path: str | Path, ids: Sequence, outputs: torch.Tensor, targets: torch.Tensor | None = None,
                      classes: Sequence[str] | None = None) -> None:
    """Write ``id, prediction, [prediction_name,] [target,] prob_0 ... prob_{C-1}`` (SPEC section 4).

    ``targets`` is left out when the labels are unknown (None, or every target is -1).
    """
    import pandas as pd

    probs = outputs.float().softmax(dim=1).cpu().numpy()
    prediction = probs.argmax(axis=1)
    table = {"id": list(ids), "prediction": prediction}
    if classes is not None:
        table["prediction_name"] = [classes[i] for i in prediction]
    if targets is not None and bool((targets >= 0).any()):
        table["target"] = targets.cpu().numpy()
    table |= {f"prob_{c}": probs[:, c] for c in range(probs.shape[1])}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table).to_csv(path, index=False)


def score(config, outputs: torch.Tensor, targets: torch.Tensor, loss_args: dict | None = None) -> dict:
    """The config's loss and metrics over a set of predictions, exact over samples: {"loss": ..., name: ...}.

    ``loss_args`` replace the config's loss arguments: the checkpoint's "balanced" class weights.

    Examples:
        >>> score(config, *predict([model], loader, device))
        {'loss': 0.05, 'accuracy': 0.986}
    """
    tracker = MetricTracker(config.init_metrics())
    tracker.update(config.init_ftn("loss", **(loss_args or {}))(outputs, targets), outputs, targets)
    return tracker.result(sync=False)
