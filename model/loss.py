"""Losses, selected in the config by name (``"loss": "cross_entropy"``) or with arguments
(``"loss": {"type": "focal_loss", "args": {"gamma": 2.0}}``).

Each takes the model's output and the targets and returns the mean over the batch's samples.
The models here return logits; ``nll_loss`` is for models that return log-probabilities.
"""
import torch
import torch.nn.functional as F


def nll_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``output`` given as log-probabilities (e.g. ``log_softmax``)."""
    return F.nll_loss(output, target)


def cross_entropy(output: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of logits, with optional label smoothing (0.1 is a common choice)."""
    return F.cross_entropy(output, target, label_smoothing=label_smoothing)


def focal_loss(
    output: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: list[float] | None = None
) -> torch.Tensor:
    """Focal loss (Lin et al., 2017) of logits: cross-entropy scaled by (1 - p_target) ** gamma.

    ``gamma=0`` is plain cross-entropy. ``alpha`` optionally weights each class.
    """
    log_prob = F.log_softmax(output.float(), dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -((1 - log_prob.exp()) ** gamma) * log_prob
    if alpha is not None:
        loss = loss * torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)[target]
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
