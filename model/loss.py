"""Losses, selected in the config by name (``"loss": "cross_entropy"``) or with arguments
(``"loss": {"type": "focal_loss", "args": {"gamma": 2.0}}``).

Each takes the model's output and the targets and returns the mean over the batch's samples. The
targets are class indices, or class probabilities of shape (batch, classes): the soft targets of
``trainer.mixup``.
The models here return logits; ``nll_loss`` is for models that return log-probabilities.

``class_weights`` is a list (one weight per class) or ``"balanced"``: the training code replaces
"balanced" by weights computed from the training split's targets (as scikit-learn's
``compute_class_weight("balanced")``) before the loss is built, and stores them in the checkpoint.
Weighted losses are the plain mean of the weighted per-sample losses.
"""
from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=16)
def _weight_tensor(weights: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Made once per device: a fresh tensor every batch would copy it to the GPU every batch.
    return torch.tensor(weights, device=device, dtype=dtype)


def _class_weight_tensor(weights, output: torch.Tensor) -> torch.Tensor | None:
    """The class weights as a tensor on ``output``'s device (None stays None)."""
    if weights is None:
        return None
    if isinstance(weights, str):
        raise ValueError(f"class_weights: {weights!r} must be resolved from the training targets before the loss "
                         "is called (train.py does it); pass a list of weights here")
    return _weight_tensor(tuple(float(w) for w in weights), output.device, torch.float32)


def nll_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``output`` given as log-probabilities (e.g. ``log_softmax``)."""
    if target.is_floating_point():  # class probabilities
        return -(target * output).sum(1).mean()
    return F.nll_loss(output, target)


def cross_entropy(output: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                  class_weights: list[float] | str | None = None) -> torch.Tensor:
    """Cross-entropy of logits, with optional label smoothing (0.1 is a common choice) and class weights.

    With class weights, each sample's loss is multiplied by its class's weight and the result is the
    plain mean over samples (not torch's mean divided by the sum of weights): so the epoch's loss,
    a mean over batches weighted by their size, is exactly the loss over all samples.
    """
    weight = _class_weight_tensor(class_weights, output)
    if weight is None:
        return F.cross_entropy(output, target, label_smoothing=label_smoothing)
    losses = F.cross_entropy(output.float(), target, weight=weight, reduction="none", label_smoothing=label_smoothing)
    return losses.mean()


def focal_loss(
    output: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: list[float] | None = None,
    class_weights: list[float] | str | None = None,
) -> torch.Tensor:
    """Focal loss (Lin et al., 2017) of logits: cross-entropy scaled by (1 - p_target) ** gamma.

    ``gamma=0`` is plain cross-entropy. ``alpha`` (or its other name ``class_weights``, which also
    takes "balanced") weights each class; the result is the plain mean over samples.
    """
    if alpha is not None and class_weights is not None:
        raise ValueError("class_weights: give alpha or class_weights, not both")
    alpha = _class_weight_tensor(class_weights if class_weights is not None else alpha, output)
    log_probs = F.log_softmax(output.float(), dim=1)
    if target.is_floating_point():  # class probabilities: the focal term of every class, weighted by them
        loss = -target * (1 - log_probs.exp()) ** gamma * log_probs
        if alpha is not None:
            loss = loss * alpha.to(loss.dtype)
        return loss.sum(1).mean()
    log_prob = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -((1 - log_prob.exp()) ** gamma) * log_prob
    if alpha is not None:
        loss = loss * alpha.to(loss.dtype)[target]
    return loss.mean()


def _as_values(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression outputs and targets in float32 of the same shape ((N,) targets fit (N, 1) outputs)."""
    return output.float(), target.float().reshape(output.shape)


def mse_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error, for regression."""
    return F.mse_loss(*_as_values(output, target))


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error, for regression (robust to outliers)."""
    return F.l1_loss(*_as_values(output, target))


def smooth_l1_loss(output: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Huber-like loss: squared below ``beta``, absolute above it."""
    return F.smooth_l1_loss(*_as_values(output, target), beta=beta)


def bce_with_logits(output: torch.Tensor, target: torch.Tensor, pos_weight: list[float] | None = None) -> torch.Tensor:
    """Binary cross-entropy of logits against 0/1 targets, for multi-label tasks.

    ``pos_weight`` (one per label) weighs the positive examples, e.g. negatives / positives of a rare label.
    """
    weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32, device=output.device)
    return F.binary_cross_entropy_with_logits(output.float(), target.float(), pos_weight=weight)


def distillation(output: torch.Tensor, target: torch.Tensor, teacher: str, alpha: float = 0.5,
                 temperature: float = 4.0, base: str | dict = "cross_entropy") -> torch.Tensor:
    """Knowledge distillation (Hinton et al., 2015) from a teacher's predictions CSV ``teacher``
    (k-fold's oof_predictions.csv, or ``inference.py --probabilities`` of an ensemble):

        alpha * base(output, target) + (1 - alpha) * T² * KL(teacher_T || student_T)

    ``base`` is the loss on the true labels: a name in this module or ``{"type", "args"}``. The teacher
    term is the task's (``soft_target_loss``): per label for multi-label, per head for multi-head, and
    the squared error to the teacher's predictions for regression (``temperature`` then unused).
    The engine (utils/data/teacher.py) reads the CSV, matches its rows to the training samples by id
    and hands each batch's rows in with its targets. On plain targets (validation, inference), and so
    when called like this, it is ``base`` alone: validation scores the student on the true labels.

    Examples:
        >>> "loss": {"type": "distillation", "args": {"teacher": "saved/Big/0101_120000/oof_predictions.csv",
        ...                                          "alpha": 0.5, "temperature": 4.0}}
    """
    spec = {"type": base} if isinstance(base, str) else base
    return globals()[spec["type"]](output, target, **spec.get("args", {}))
