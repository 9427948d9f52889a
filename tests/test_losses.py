"""The built-in losses of model/loss.py against hand-written formulas, and selected by name in a config."""
import math

import pytest
import torch

import model.loss as module_loss
from config_parser import ConfigParser
from model.loss import cross_entropy, focal_loss, nll_loss
from tests.conftest import TINY_CONFIG


def batch(seed: int = 0, n: int = 12, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=generator) * 2, torch.randint(0, classes, (n,), generator=generator)


def softmax_row(row: list[float]) -> list[float]:
    exps = [math.exp(x - max(row)) for x in row]
    return [e / sum(exps) for e in exps]


def focal_by_hand(output: torch.Tensor, target: torch.Tensor, gamma: float, alpha=None) -> float:
    """Lin et al. (2017): the mean over samples of -alpha_t * (1 - p_t) ** gamma * log(p_t)."""
    total = 0.0
    for row, label in zip(output.tolist(), target.tolist()):
        p = softmax_row(row)[label]
        weight = alpha[label] if alpha is not None else 1.0
        total += -weight * (1 - p) ** gamma * math.log(p)
    return total / len(target)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_focal_loss_is_the_formula(gamma):
    output, target = batch()
    assert focal_loss(output, target, gamma=gamma).item() == pytest.approx(focal_by_hand(output, target, gamma),
                                                                          rel=1e-5)


def test_focal_loss_with_class_weights():
    output, target = batch(seed=1)
    alpha = [0.1, 0.2, 0.3, 0.4]
    assert focal_loss(output, target, gamma=2.0, alpha=alpha).item() == pytest.approx(
        focal_by_hand(output, target, 2.0, alpha), rel=1e-5)


def test_focal_loss_with_gamma_zero_is_cross_entropy_and_down_weights_easy_samples():
    output, target = batch(seed=2)
    assert focal_loss(output, target, gamma=0.0).item() == pytest.approx(cross_entropy(output, target).item(),
                                                                         rel=1e-6)
    assert focal_loss(output, target, gamma=2.0).item() < cross_entropy(output, target).item()


def test_nll_loss_of_log_probabilities_is_the_formula():
    output, target = batch(seed=3)
    log_probs = output.log_softmax(dim=1)
    by_hand = -sum(math.log(softmax_row(row)[label]) for row, label in zip(output.tolist(), target.tolist()))
    assert nll_loss(log_probs, target).item() == pytest.approx(by_hand / len(target), rel=1e-5)
    # On log-probabilities it is the cross-entropy of the logits.
    assert nll_loss(log_probs, target).item() == pytest.approx(cross_entropy(output, target).item(), rel=1e-6)


@pytest.mark.parametrize(("loss", "expected"), [
    ({"type": "focal_loss", "args": {"gamma": 3.0}}, lambda o, t: focal_by_hand(o, t, 3.0)),
    ("nll_loss", lambda o, t: -o.gather(1, t.unsqueeze(1)).mean().item()),
])
def test_losses_are_selected_by_name_with_their_args(loss, expected):
    config = ConfigParser({**TINY_CONFIG, "loss": loss})
    criterion = config.init_ftn("loss", module_loss)
    output, target = batch(seed=4)
    output = output.log_softmax(1) if loss == "nll_loss" else output
    assert criterion(output, target).item() == pytest.approx(expected(output, target), rel=1e-5)
