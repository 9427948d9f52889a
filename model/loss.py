"""Losses, selected in the config by name (``"loss": "cross_entropy"``) or with arguments
(``"loss": {"type": "focal_loss", "args": {"gamma": 2.0}}``).

Each takes the model's output and the targets and returns the mean over the batch's samples. The
targets are class indices, or class probabilities of shape (batch, classes): the soft targets of
``trainer.mixup``.
The models here return logits; ``nll_loss`` is for models that return log-probabilities.
"""
import torch
import torch.nn.functional as F


def nll_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``output`` given as log-probabilities (e.g. ``log_softmax``)."""
    if target.is_floating_point():  # class probabilities
        return -(target * output).sum(1).mean()
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
    log_probs = F.log_softmax(output.float(), dim=1)
    if target.is_floating_point():  # class probabilities: the focal term of every class, weighted by them
        loss = -target * (1 - log_probs.exp()) ** gamma * log_probs
        if alpha is not None:
            loss = loss * torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)
        return loss.sum(1).mean()
    log_prob = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -((1 - log_prob.exp()) ** gamma) * log_prob
    if alpha is not None:
        loss = loss * torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)[target]
    return loss.mean()
