"""Epoch metrics through MetricTracker equal scikit-learn's over all samples, whatever the batching."""
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

from base.metric_tracker import MeanMetric, MetricTracker
from model.metric import MacroF1, accuracy, top_k_acc

NUM_CLASSES = 5


def make_data(n: int, scenario: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets; some scenarios leave classes out of the targets or the predictions."""
    generator = torch.Generator().manual_seed(seed)
    output = torch.randn(n, NUM_CLASSES, generator=generator)
    target = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    if scenario in ("never_present", "mixed"):
        target[target == 4] = 0  # class 4 is predicted but never a target
    if scenario in ("never_predicted", "mixed"):
        output[:, 2] = -10.0  # class 2 is a target but never predicted
    if scenario == "mixed":
        output[:, 3] = -10.0  # class 3 is never predicted ...
        target[target == 3] = 1  # ... nor a target: it appears nowhere
    if scenario == "perfect":
        output = F.one_hot(target, NUM_CLASSES).float() * 5
    return output, target


def sklearn_values(output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    y_true, scores = target.numpy(), output.numpy()
    y_pred = scores.argmax(axis=1)
    labels = np.arange(NUM_CLASSES)
    per_sample = F.cross_entropy(output, target, reduction="none").double()
    return {
        "loss": per_sample.mean().item(),
        "accuracy": accuracy_score(y_true, y_pred),
        "top_k_acc": top_k_accuracy_score(y_true, scores, k=3, labels=labels),
        "top_2": top_k_accuracy_score(y_true, scores, k=2, labels=labels),
        "macro_f1": f1_score(y_true, y_pred, average="macro", zero_division=0),
    }


def new_tracker() -> MetricTracker:
    return MetricTracker({"accuracy": accuracy, "top_k_acc": top_k_acc,
                          "top_2": lambda o, t: top_k_acc(o, t, k=2), "macro_f1": MacroF1()})


def batches(output, target, batch_size: int):
    for start in range(0, len(target), batch_size):
        o, t = output[start:start + batch_size], target[start:start + batch_size]
        yield F.cross_entropy(o, t), o, t  # the batch's mean loss, as the trainer passes it


def assert_matches(result: dict, expected: dict, prefix: str = "") -> None:
    assert set(result) == {prefix + key for key in expected}
    for key, value in expected.items():
        # The loss is a float32 batch mean: exact up to float32 rounding of its value.
        rel = 1e-6 if key == "loss" else None
        assert result[prefix + key] == pytest.approx(value, rel=rel, abs=1e-6), key


@pytest.mark.parametrize("scenario", ["random", "never_present", "never_predicted", "mixed", "perfect"])
@pytest.mark.parametrize("batch_size", [10, 7, 5, 1, 103, 200])
def test_tracker_matches_sklearn_over_uneven_batches(scenario, batch_size):
    output, target = make_data(103, scenario)
    tracker = new_tracker()
    for loss, o, t in batches(output, target, batch_size):
        tracker.update(loss, o, t)
    expected = sklearn_values(output, target)
    assert_matches(tracker.result(prefix="val_"), expected, prefix="val_")


def test_scenarios_do_what_they_say():
    """The edge cases really occur (else the test above would not test them)."""
    output, target = make_data(103, "mixed")
    predicted = set(output.argmax(1).tolist())
    present = set(target.tolist())
    assert 4 in predicted and 4 not in present
    assert 2 in present and 2 not in predicted
    assert 3 not in present and 3 not in predicted
    # A macro average over all 5 classes would differ from sklearn's over the classes that occur.
    y_pred = output.argmax(1).numpy()
    assert f1_score(target.numpy(), y_pred, average="macro", zero_division=0) != pytest.approx(
        f1_score(target.numpy(), y_pred, average="macro", labels=range(NUM_CLASSES), zero_division=0))


def test_uneven_batch_weighting_matters():
    """A plain mean of batch means differs from the exact value here, so the test above can fail."""
    output, target = make_data(103, "random")
    batch_means = [accuracy(o, t).item() for _, o, t in batches(output, target, 10)]
    exact = accuracy_score(target.numpy(), output.argmax(1).numpy())
    assert np.mean(batch_means) != pytest.approx(exact, abs=1e-6)


def test_loss_is_sample_weighted():
    output, target = make_data(103, "random", seed=4)
    per_sample = F.cross_entropy(output, target, reduction="none")
    tracker = MetricTracker({})
    sizes = [1, 50, 2, 30, 20]
    start = 0
    for size in sizes:
        part = per_sample[start:start + size]
        tracker.update(part.mean(), output[start:start + size], target[start:start + size])
        start += size
    assert start == 103
    assert tracker.result()["loss"] == pytest.approx(per_sample.double().mean().item(), abs=1e-6)


def test_many_batches_flush_in_groups():
    """More batches than the queue holds (16): every batch counted once."""
    output, target = make_data(103, "random", seed=2)
    tracker = new_tracker()
    for loss, o, t in batches(output, target, 3):  # 35 batches, the last of 1 sample
        tracker.update(loss, o, t)
    assert len(tracker.queue) < 16
    assert_matches(tracker.result(), sklearn_values(output, target))


def test_reset_starts_a_new_epoch():
    tracker = new_tracker()
    first, first_target = make_data(40, "random", seed=5)
    for loss, o, t in batches(first, first_target, 8):
        tracker.update(loss, o, t)
    tracker.result()
    tracker.reset()
    output, target = make_data(57, "mixed", seed=6)
    for loss, o, t in batches(output, target, 8):
        tracker.update(loss, o, t)
    assert_matches(tracker.result(), sklearn_values(output, target))


@pytest.mark.parametrize("split_after", [1, 5, 10, 17, 20])
def test_state_dict_round_trip_continues_exactly(split_after):
    output, target = make_data(103, "mixed", seed=7)
    all_batches = list(batches(output, target, 5))  # 21 batches: the queue is flushed after 16
    first = new_tracker()
    for batch in all_batches[:split_after]:
        first.update(*batch)
    # Through a checkpoint file, as the trainer saves it.
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    second = new_tracker()
    second.load_state_dict(state, torch.device("cpu"))
    for batch in all_batches[split_after:]:
        second.update(*batch)
    expected = sklearn_values(output, target)
    assert_matches(second.result(), expected)

    uninterrupted = new_tracker()
    for batch in all_batches:
        uninterrupted.update(*batch)
    assert second.result() == uninterrupted.result()


def test_state_dict_of_an_empty_tracker():
    tracker = new_tracker()
    restored = new_tracker()
    restored.load_state_dict(tracker.state_dict(), torch.device("cpu"))
    output, target = make_data(30, "random", seed=8)
    for batch in batches(output, target, 4):
        restored.update(*batch)
    assert_matches(restored.result(), sklearn_values(output, target))


def test_metric_functions_on_a_hand_made_batch():
    # No ties within a row: scikit-learn and torch.topk may order tied scores differently.
    output = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.06, 0.04], [0.2, 0.3, 0.5], [0.35, 0.25, 0.4]])
    target = torch.tensor([1, 1, 0, 0])
    assert all(len(set(row)) == len(row) for row in output.tolist())
    y_true, scores, labels = target.numpy(), output.numpy(), [0, 1, 2]
    assert accuracy(output, target).item() == pytest.approx(accuracy_score(y_true, scores.argmax(1)))
    # Counted by hand: the target is among the two highest scores in rows 0, 1 and 3.
    assert top_k_accuracy_score(y_true, scores, k=2, labels=labels) == 0.75
    assert top_k_acc(output, target, k=2).item() == pytest.approx(0.75)
    assert top_k_acc(output, target, k=3).item() == pytest.approx(top_k_accuracy_score(y_true, scores, k=3,
                                                                                        labels=labels))
    # k larger than the number of classes is all of them.
    assert top_k_acc(output, target, k=10).item() == pytest.approx(1.0)
    f1 = MacroF1()
    f1.update(output, target)
    assert f1.compute() == pytest.approx(f1_score(y_true, scores.argmax(1), average="macro", zero_division=0))


def test_scenarios_have_no_ties_at_the_top_k_boundary():
    """Whether the target is in the top k never depends on how tied scores are ordered in make_data's
    batches, so the top-k expectations from scikit-learn hold for any tie order."""
    for scenario in ("random", "never_present", "never_predicted", "mixed", "perfect"):
        output, target = make_data(103, scenario)
        for row, label in zip(output.tolist(), target.tolist()):
            above = sum(score > row[label] for score in row)
            at_least = sum(score >= row[label] for score in row)
            for k in (2, 3):
                assert (at_least <= k) == (above < k), (scenario, row, label, k)


def test_macro_f1_with_fixed_num_classes_accumulates_batches():
    output, target = make_data(103, "never_present", seed=9)
    metric = MacroF1(num_classes=NUM_CLASSES)
    for start in range(0, 103, 10):
        metric.update(output[start:start + 10], target[start:start + 10])
    expected = f1_score(target.numpy(), output.argmax(1).numpy(), average="macro", zero_division=0)
    assert metric.compute() == pytest.approx(expected, abs=1e-6)


def test_empty_metrics_are_nan():
    assert np.isnan(MeanMetric(accuracy).compute())
    assert np.isnan(MacroF1().compute())
