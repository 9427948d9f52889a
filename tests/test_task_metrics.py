"""Regression and multi-label losses and metrics, checked against scikit-learn and torch references."""
import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from base.metric_tracker import MetricTracker
from model import loss as module_loss
from model import metric as module_metric
from model.task import MultiHead, MultiLabel, Regression


def tracked(metric, batches, processes=1):
    """The epoch value over uneven batches, with the running totals of `processes` trackers added
    (what DDP's sum over processes does)."""
    trackers = [MetricTracker({"m": metric}) for _ in range(processes)]
    for i, (output, target) in enumerate(batches):
        trackers[i % processes].update(torch.tensor(0.0), output, target)
    for tracker in trackers:
        tracker.flush()
    states = [tracker.metrics["m"].state() for tracker in trackers]
    first = trackers[0].metrics["m"]
    if isinstance(first, module_metric.MeanAveragePrecision):
        first.load_state([torch.cat(parts) for parts in zip(*states)])
    else:
        first.load_state([sum(parts) for parts in zip(*states)])
    return first.compute()


def split(output, target, sizes=(7, 30, 1, 12)):
    edges = np.cumsum((0, *sizes))
    return [(output[a:b], target[a:b]) for a, b in zip(edges[:-1], edges[1:])]


@pytest.mark.parametrize("outputs", [1, 3])
@pytest.mark.parametrize("processes", [1, 2])
def test_regression_metrics_equal_sklearn_over_uneven_batches(outputs, processes):
    generator = torch.Generator().manual_seed(outputs)
    target = torch.randn(50, outputs, generator=generator) * 3 + 1
    output = target + torch.randn(50, outputs, generator=generator)
    batches = split(output, target)
    y, p = target.numpy(), output.numpy()
    assert tracked(module_metric.mae, batches, processes) == pytest.approx(sk.mean_absolute_error(y, p), rel=1e-6)
    assert tracked(module_metric.rmse(), batches, processes) == pytest.approx(sk.mean_squared_error(y, p) ** 0.5,
                                                                              rel=1e-6)
    assert tracked(module_metric.r2(), batches, processes) == pytest.approx(sk.r2_score(y, p), rel=1e-6)


def test_rmse_is_not_a_mean_of_batch_rmses():
    target = torch.zeros(4, 1)
    output = torch.tensor([[0.0], [0.0], [0.0], [4.0]])
    batches = [(output[:3], target[:3]), (output[3:], target[3:])]
    assert tracked(module_metric.rmse(), batches) == pytest.approx(2.0)  # sqrt(16 / 4), not (0 + 4) / 2


@pytest.mark.parametrize("processes", [1, 2])
def test_multilabel_metrics_equal_sklearn(processes):
    generator = torch.Generator().manual_seed(0)
    target = (torch.rand(60, 5, generator=generator) > 0.6).float()
    target[:, 4] = 0  # a label that never occurs
    logits = (target * 2 - 1) + torch.randn(60, 5, generator=generator) * 1.5
    logits[::7] = logits[::7].round()  # ties among the scores
    batches = split(logits, target, (9, 20, 1, 30))
    y, probs = target.numpy().astype(int), logits.sigmoid().numpy()
    f1 = sk.f1_score(y, (probs >= 0.5).astype(int), average="macro", zero_division=0)
    assert tracked(module_metric.MultilabelF1(), batches, processes) == pytest.approx(f1, abs=1e-9)
    assert tracked(module_metric.subset_accuracy, batches, processes) == pytest.approx(
        sk.accuracy_score(y, (probs >= 0.5).astype(int)), abs=1e-9)
    present = y.sum(axis=0) > 0  # scikit-learn's AP of a label without positives is undefined: left out
    expected_map = sk.average_precision_score(y[:, present], logits.numpy()[:, present], average="macro")
    assert tracked(module_metric.mean_average_precision(), batches, processes) == pytest.approx(expected_map,
                                                                                               abs=1e-9)


def test_multilabel_f1_uses_the_tasks_per_label_thresholds():
    task = MultiLabel(thresholds=[0.2, 0.5, 0.9])
    metrics = task.wrap_metrics({"f1": module_metric.MultilabelF1()})
    logits = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 1.0, 3.0], [2.0, -2.0, 2.5]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    predicted = logits.sigmoid().numpy() >= np.array([0.2, 0.5, 0.9])
    expected = sk.f1_score(target.numpy().astype(int), predicted.astype(int), average="macro", zero_division=0)
    assert tracked(metrics["f1"], [(logits, target)]) == pytest.approx(expected)


def test_regression_losses_equal_torch_and_fit_a_column_of_targets():
    output, target = torch.randn(8, 1), torch.randn(8)  # (N,) targets: the column is not broadcast to (N, N)
    assert module_loss.mse_loss(output, target) == pytest.approx(((output[:, 0] - target) ** 2).mean().item())
    assert module_loss.l1_loss(output, target) == pytest.approx((output[:, 0] - target).abs().mean().item())
    assert module_loss.smooth_l1_loss(output, target, beta=0.5) == pytest.approx(
        torch.nn.functional.smooth_l1_loss(output[:, 0], target, beta=0.5).item())


def test_bce_with_logits_weighs_positives():
    logits, target = torch.randn(6, 3), (torch.rand(6, 3) > 0.5).float()
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0, 2.0, 3.0]))(logits, target)
    assert module_loss.bce_with_logits(logits, target, pos_weight=[1.0, 2.0, 3.0]) == pytest.approx(expected.item())


def test_multihead_combined_class_and_weighted_loss():
    task = MultiHead({"mask": 3, "gender": 2, "age": 3}, weights={"age": 2.0})
    target = torch.tensor([[2, 1, 0], [0, 0, 2]])
    assert task.combined_target(target).tolist() == [15, 2]
    logits = torch.randn(2, 8)
    combined = task.combined_logits(logits)
    digits = [logits[:, :3].argmax(1), logits[:, 3:5].argmax(1), logits[:, 5:].argmax(1)]
    assert combined.shape == (2, 18)
    assert combined.argmax(1).tolist() == (digits[0] * 6 + digits[1] * 3 + digits[2]).tolist()
    torch.testing.assert_close(combined.exp().sum(1), torch.ones(2))
    ce = torch.nn.functional.cross_entropy
    expected = ce(logits[:, :3], target[:, 0]) + ce(logits[:, 3:5], target[:, 1]) + 2 * ce(logits[:, 5:], target[:, 2])
    torch.testing.assert_close(task.wrap_loss(module_loss.cross_entropy)(logits, target), expected)


def test_regression_stratifies_on_quantile_bins():
    values = np.random.default_rng(0).exponential(size=1000)
    bins = Regression().stratify_labels(values.tolist(), n_bins=10)
    assert sorted(np.unique(bins)) == list(range(10))
    assert np.bincount(bins).min() >= 99  # equal-frequency bins, not equal-width


def test_task_metrics_resume_mid_epoch_exactly():
    """The tracker's state_dict (saved in a mid-epoch checkpoint) continues to the same epoch values."""
    task = MultiHead({"a": 3, "b": 2})
    metrics = task.wrap_metrics({"accuracy": module_metric.accuracy, "MacroF1": module_metric.MacroF1()})
    metrics |= {"map": module_metric.mean_average_precision(), "r2": module_metric.r2()}
    generator = torch.Generator().manual_seed(3)
    batches = [(torch.randn(n, 5, generator=generator),
                torch.stack([torch.randint(0, 3, (n,), generator=generator),
                             torch.randint(0, 2, (n,), generator=generator)], dim=1)) for n in (8, 8, 5, 8)]

    def update(tracker, part):
        for output, target in part:
            tracker.update(torch.tensor(0.5), output, target)

    def run(stop_after=None):
        tracker = MetricTracker({k: v for k, v in metrics.items() if k not in ("map", "r2")})
        update(tracker, batches[:stop_after])
        if stop_after is not None:
            state = tracker.state_dict()
            tracker = MetricTracker({k: v for k, v in metrics.items() if k not in ("map", "r2")})
            tracker.load_state_dict(state, torch.device("cpu"))
            update(tracker, batches[stop_after:])
        return tracker.result(sync=False)

    assert run() == run(stop_after=2)
    values = [(o[:, :2], (t.float() > 0.5).float()) for o, t in batches]

    def plain(metric, stop_after=None):
        tracker = MetricTracker({"m": metric})
        for output, target in values[:stop_after]:
            tracker.update(torch.tensor(0.0), output, target)
        if stop_after is not None:
            state = tracker.state_dict()
            tracker = MetricTracker({"m": metric})
            tracker.load_state_dict(state, torch.device("cpu"))
            for output, target in values[stop_after:]:
                tracker.update(torch.tensor(0.0), output, target)
        return tracker.result(sync=False)["m"]

    for name in ("map", "r2"):
        assert plain(metrics[name]) == plain(metrics[name], stop_after=3)


def test_label_columns_are_read_per_task(tmp_path):
    import pandas as pd

    from dataset.labels import read_labels
    from utils.errors import DataError

    table = pd.DataFrame({"tags": ["cat dog", "owl", "dog"], "price": [1.5, 2.0, 3.25], "a": [0, 1, 2],
                          "b": [1, 0, 1], "name": ["x", "y", "x"]})
    where = [f"line {i + 2}" for i in range(3)]
    assert read_labels(table, "tags", where) == ([[1, 1, 0], [0, 0, 1], [0, 1, 0]], ["cat", "dog", "owl"])
    assert read_labels(table, "price", where) == ([1.5, 2.0, 3.25], None)
    assert read_labels(table, ["a", "b"], where) == ([[0, 1], [1, 0], [2, 1]], ["a", "b"])
    assert read_labels(table, "name", where) == ([0, 1, 0], ["x", "y"])
    table["price"] = ["1.5", "n/a", "3"]
    with pytest.raises(DataError, match="line 3: label 'n/a' is not a number"):
        read_labels(table, "price", where)
