"""Where a classifier fails: metrics with bootstrap intervals, the per-class table, the confusion
matrix and its most confused pairs, the highest-loss samples, and the error per group and per fold.

Everything works on N x C float32 probabilities and integer targets; nothing here makes an N x C
copy beyond one at a time, so 100,000 x 100 predictions stay within a few hundred MB.
"""
import numpy as np
from tqdm import tqdm

BOOTSTRAP_ROUNDS = 1000


def sample_losses(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per sample, the cross-entropy of its true class: -log p(target)."""
    return -np.log(np.maximum(probs[np.arange(len(targets)), targets].astype(np.float64), 1e-12))


def confusion_counts(targets: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted] (int64, C x C)."""
    flat = np.bincount(targets * num_classes + predicted, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _macro_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """Mean F1 over the classes that occur as a target or a prediction (scikit-learn's macro average)."""
    present = (tp + fp + fn) > 0
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return float(f1.mean()) if f1.size else 0.0


def bootstrap_summary(targets: np.ndarray, predicted: np.ndarray, losses: np.ndarray, num_classes: int,
                      rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0, progress: bool = False):
    """Accuracy, macro F1 and loss (mean cross-entropy) with 95% percentile bootstrap intervals.

    Each round resamples the N samples with replacement (as counts per sample, so a round costs a
    few passes over N, never an N x C array).

    Examples:
        >>> bootstrap_summary(targets, probs.argmax(1), sample_losses(probs, targets), 10)
    """
    import pandas as pd

    correct = (targets == predicted).astype(np.float64)
    n = len(targets)

    def metrics(weights: np.ndarray) -> tuple[float, float, float]:
        tp = np.bincount(targets, weights * correct, num_classes)
        fn = np.bincount(targets, weights, num_classes) - tp
        fp = np.bincount(predicted, weights, num_classes) - tp
        return float(weights @ correct / n), _macro_f1(tp, fp, fn), float(weights @ losses / n)

    rng = np.random.default_rng(seed)
    samples = np.array([metrics(np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64))
                        for _ in tqdm(range(rounds), desc="bootstrap", leave=False, disable=not progress, delay=1)])
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    value = metrics(np.ones(n))
    return pd.DataFrame({"metric": ["accuracy", "macro_f1", "loss"], "value": value,
                         "ci95_low": low, "ci95_high": high})


def per_class_table(confusion: np.ndarray, classes: list[str]):
    """Support, precision, recall and F1 of each class (as scikit-learn's classification report),
    worst F1 first (ties: the larger class first)."""
    import pandas as pd

    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    table = pd.DataFrame({"class": classes, "index": np.arange(len(classes)), "support": support,
                          "precision": precision, "recall": recall, "f1": f1})
    return table.sort_values(["f1", "support"], ascending=[True, False], kind="stable").reset_index(drop=True)


def confused_pairs(confusion: np.ndarray, classes: list[str], top: int = 20):
    """The ``top`` most frequent (true, predicted) mistakes, with their share of the true class."""
    import pandas as pd

    errors = confusion.copy()
    np.fill_diagonal(errors, 0)
    flat = errors.ravel()
    order = np.argsort(-flat, kind="stable")[:top]
    order = order[flat[order] > 0]
    true, predicted = np.divmod(order, confusion.shape[0])
    support = confusion.sum(axis=1)
    return pd.DataFrame({"true": [classes[i] for i in true], "predicted": [classes[i] for i in predicted],
                         "count": flat[order], "share_of_true": flat[order] / np.maximum(support[true], 1)})


def worst_samples(ids: np.ndarray, probs: np.ndarray, targets: np.ndarray, losses: np.ndarray,
                  classes: list[str], top: int):
    """The ``top`` samples with the highest loss, highest first: id, true and predicted class, their
    probabilities and the loss."""
    import pandas as pd

    top = min(top, len(losses))
    chosen = np.argpartition(-losses, top - 1)[:top] if top else np.array([], dtype=np.int64)
    chosen = chosen[np.argsort(-losses[chosen], kind="stable")]
    rows = probs[chosen]
    predicted = rows.argmax(axis=1)
    return pd.DataFrame({"id": ids[chosen], "true": [classes[i] for i in targets[chosen]],
                         "predicted": [classes[i] for i in predicted],
                         "p_true": rows[np.arange(len(chosen)), targets[chosen]],
                         "p_predicted": rows[np.arange(len(chosen)), predicted], "loss": losses[chosen],
                         "row": chosen})


def error_by(keys: np.ndarray, correct: np.ndarray, losses: np.ndarray, name: str):
    """Per value of ``keys`` (a group, a fold): samples, error rate and mean loss, worst error first."""
    import pandas as pd

    table = pd.DataFrame({name: keys, "error": 1.0 - correct, "loss": losses})
    grouped = table.groupby(name, sort=True).agg(samples=("error", "size"), error_rate=("error", "mean"),
                                                 mean_loss=("loss", "mean")).reset_index()
    return grouped.sort_values(["error_rate", "samples"], ascending=[False, False], kind="stable")


def analyze_classification(predictions, top: int = 25, progress: bool = False) -> dict:
    """Every classification table of one RUN (see the module docstring), as a dict of DataFrames."""
    probs, targets, classes = predictions.probs, predictions.targets, predictions.classes
    predicted = probs.argmax(axis=1)
    losses = sample_losses(probs, targets)
    confusion = confusion_counts(targets, predicted, probs.shape[1])
    correct = (predicted == targets).astype(np.float64)
    table = predictions.table
    result = {"summary": bootstrap_summary(targets, predicted, losses, probs.shape[1], progress=progress),
              "per_class": per_class_table(confusion, classes), "confusion": confusion,
              "confused_pairs": confused_pairs(confusion, classes),
              "worst": worst_samples(predictions.ids, probs, targets, losses, classes, top),
              "correct": correct}
    if "fold" in table.columns:
        result["folds"] = error_by(table["fold"].to_numpy(), correct, losses, "fold").sort_values("fold")
    if "group" in table.columns:
        result["groups"] = error_by(table["group"].astype(str).to_numpy(), correct, losses, "group")
    return result
