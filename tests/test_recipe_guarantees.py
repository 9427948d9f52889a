"""The guarantees of the training recipe and of prediction, each checked in a unit test against a formula
computed here: the EMA's warmup and its BatchNorm buffers, MixUp / CutMix draws and soft targets, the
balanced sampler's draw per epoch, "balanced" pos_weight, and ensembles / TTA of multi-label and
multi-head outputs."""
import pytest
import torch
from torch import nn

from base.base_data_loader import BaseDataLoader
from model.multihead import MultiHead
from model.task import MultiLabel
from utils.data.class_weights import loss_args_from_data
from utils.predict import predict
from utils.recipe.ema import ModelEma
from utils.recipe.mixup import BatchMixer


# -- EMA ---------------------------------------------------------------------------------------------------
class Tiny(nn.Module):
    """A weight and a BatchNorm: parameters and buffers."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.norm(self.linear(x))


def set_state(model: Tiny, step: int) -> dict:
    """Give every floating tensor of the model (parameters and BatchNorm buffers) a value of its own for
    ``step``; returns them in float64."""
    generator = torch.Generator().manual_seed(step)
    values = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
                values[name] = tensor.double().clone()
    model.norm.num_batches_tracked.fill_(10 * step)
    return values


def expected_ema(model: Tiny, decays: list) -> dict:
    """``ema = w_0``, then ``ema = d_t * ema + (1 - d_t) * w_t``, in float64."""
    ema = set_state(model, 0)
    for step, decay in enumerate(decays, start=1):
        current = set_state(model, step)
        ema = {name: decay * ema[name] + (1 - decay) * current[name] for name in ema}
    return ema


def run_ema(decay: float, warmup: bool, steps: int) -> tuple[dict, Tiny]:
    model = Tiny()
    set_state(model, 0)
    ema = ModelEma(model, decay=decay, warmup=warmup)
    for step in range(steps + 1):
        set_state(model, step)
        ema.update(model)
    return ema.module.state_dict(), model


def test_ema_warmup_follows_its_closed_form_then_the_decay():
    decay, steps = 0.6, 6
    # the decay of the t-th average after the first copy: 1 - (1 + t) ** (-2/3), at most `decay`
    decays = [min(decay, 1 - (1 + t) ** (-2 / 3)) for t in range(1, steps + 1)]
    assert decays[0] < decay and decays[-1] == decay, "both the warmup and the cap are exercised"
    got, model = run_ema(decay, warmup=True, steps=steps)
    expected = expected_ema(model, decays)
    for name, value in expected.items():
        torch.testing.assert_close(got[name].double(), value, rtol=0, atol=1e-6, msg=name)


def test_ema_averages_the_batchnorm_buffers_with_the_weights():
    got, model = run_ema(0.5, warmup=False, steps=4)
    expected = expected_ema(model, [0.5] * 4)
    for name in ("norm.running_mean", "norm.running_var", "norm.weight", "linear.weight"):
        torch.testing.assert_close(got[name].double(), expected[name], rtol=0, atol=1e-6, msg=name)
    assert int(got["norm.num_batches_tracked"]) == 40, "integer counters are copied"


# -- MixUp / CutMix --------------------------------------------------------------------------------------
N = 6


def identity_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Sample i is the one-hot image of channel i and of class i: the mean of a mixed image over its
    pixels is the mixture of classes it holds, whatever the permutation, lambda or CutMix box."""
    return torch.eye(N)[:, :, None, None].expand(N, N, 8, 8).contiguous(), torch.arange(N)


def mixture(mixed: torch.Tensor, smoothing: float) -> torch.Tensor:
    return mixed.mean(dim=(2, 3)) * (1 - smoothing) + smoothing / N


@pytest.mark.parametrize("mixup, cutmix", [(1.0, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_soft_targets_are_mixed_with_the_inputs_permutation_and_lambda(mixup, cutmix):
    mixer = BatchMixer(N, mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.1, seed=3)
    data, target = identity_batch()
    mixed_batches = 0
    for batch_idx in range(6):
        mixed, soft = mixer(data, target, epoch=1, batch_idx=batch_idx)
        torch.testing.assert_close(soft, mixture(mixed, 0.1), rtol=0, atol=1e-5)
        mixed_batches += not torch.equal(mixed, data)
    assert mixed_batches >= 5, "prob 1: (nearly) every batch is mixed"


def test_every_batch_and_epoch_gets_a_fresh_draw():
    mixer = BatchMixer(N, mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0, seed=3)
    data, target = identity_batch()
    lambdas = []
    for epoch in (1, 2):
        for batch_idx in range(4):
            _, soft = mixer(data, target, epoch=epoch, batch_idx=batch_idx)
            lambdas.append(round(float(soft[0, 0]), 6))  # sample 0 keeps lambda of its own class
    assert len(set(lambdas)) == len(lambdas), lambdas
    again = mixer(data, target, epoch=1, batch_idx=2)[1]
    assert round(float(again[0, 0]), 6) == lambdas[2], "a batch's draw depends on (seed, epoch, batch) alone"


def test_off_epoch_is_the_last_epoch_that_mixes():
    mixer = BatchMixer(N, mixup_alpha=1.0, cutmix_alpha=1.0, off_epoch=2, label_smoothing=0.1, seed=3)
    data, target = identity_batch()
    plain = torch.nn.functional.one_hot(target, N).float() * 0.9 + 0.1 / N
    for epoch in (1, 2):
        assert any(not torch.equal(mixer(data, target, epoch, b)[0], data) for b in range(3)), epoch
    for batch_idx in range(3):
        mixed, soft = mixer(data, target, epoch=3, batch_idx=batch_idx)
        assert torch.equal(mixed, data)
        torch.testing.assert_close(soft, plain, rtol=0, atol=0)


# -- the balanced sampler --------------------------------------------------------------------------------
class Labelled(torch.utils.data.Dataset):
    def __init__(self, targets):
        self.targets = list(targets)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, key):
        index, _ = key
        return torch.tensor([float(index)]), self.targets[index]


def test_the_balanced_sampler_draws_other_samples_every_epoch():
    targets = [0] * 45 + [1] * 5
    loader = BaseDataLoader(Labelled(targets), batch_size=10, validation_split=0, sampler="balanced", seed=4)
    draws = []
    for epoch in (1, 2, 3):
        loader.set_epoch(epoch)
        draws.append([int(x) for data, _ in loader for x in data.flatten()])  # the samples the batches hold
    assert all(len(draw) == 50 for draw in draws)
    assert draws[0] != draws[1] and draws[1] != draws[2] and draws[0] != draws[2]
    minority = [sum(targets[i] for i in draw) for draw in draws]
    assert all(10 <= count <= 40 for count in minority), minority  # about 25 of 50: balanced, not 5


# -- pos_weight "balanced" -------------------------------------------------------------------------------
def test_balanced_pos_weight_is_negatives_over_positives_of_the_training_part():
    class MultiLabelData:
        targets = [[1, 0, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]]

    config = {"loss": {"type": "binary_cross_entropy", "args": {"pos_weight": "balanced"}}}
    # Training rows 0-3 (row 4 is validation): positives 3, 1, 2; negatives 1, 3, 2.
    resolved = loss_args_from_data(config, MultiLabelData(), [0, 1, 2, 3], None)
    assert resolved["pos_weight"] == pytest.approx([1 / 3, 3 / 1, 2 / 2])


# -- ensembles and TTA -----------------------------------------------------------------------------------
class Fixed(nn.Module):
    """Logits ``x @ weight``: a known output for any input."""

    def __init__(self, seed: int, outputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, outputs, generator=torch.Generator().manual_seed(seed)) * 3)

    def forward(self, x):
        return x @ self.weight


def ensemble_outputs(task, outputs: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(what predict returns for 2 models x 2 views, the 4 raw outputs by hand)."""
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(10, outputs)), batch_size=4)
    models = [Fixed(1, outputs), Fixed(2, outputs)]
    flip = [lambda batch: -batch.flip(1)]
    got, _ = predict(models, loader, torch.device("cpu"), task, tta=flip)
    with torch.no_grad():
        raw = [model(view) for model in models for view in (x, -x.flip(1))]
    return got, raw


def test_multilabel_ensembles_and_tta_average_the_probabilities():
    got, raw = ensemble_outputs(MultiLabel(), 3)
    expected = sum(output.sigmoid() for output in raw) / len(raw)
    torch.testing.assert_close(got.sigmoid(), expected, rtol=0, atol=1e-5)


def test_multihead_ensembles_and_tta_average_the_probabilities_of_each_head():
    task = MultiHead({"mask": 3, "age": 2})
    got, raw = ensemble_outputs(task, 5)
    for head in (slice(0, 3), slice(3, 5)):
        expected = sum(output[:, head].softmax(dim=1) for output in raw) / len(raw)
        torch.testing.assert_close(got[:, head].softmax(dim=1), expected, rtol=0, atol=1e-5)
