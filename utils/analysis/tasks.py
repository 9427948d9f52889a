"""The analysis of the other tasks: regression (residuals), multi-label (per label) and multi-head
(each head as a classifier of its own, and the combined class)."""
import json
import re

import numpy as np

from utils.analysis.calibration import calibrate
from utils.analysis.classification import analyze_classification, bootstrap_summary, sample_losses


def analyze_regression(predictions, top: int = 25, bins: int = 10) -> dict:
    """Residuals (prediction - target) of the first target: summary with bootstrap intervals of the
    mean absolute error, the worst residuals, and the error per quantile bin of the target."""
    import pandas as pd

    table = predictions.table
    predicted = table.filter(regex=r"^prediction(_\d+)?$").iloc[:, 0].to_numpy(np.float64)
    target = table.filter(regex=r"^target(_\d+)?$").iloc[:, 0].to_numpy(np.float64)
    residual = predicted - target
    rng = np.random.default_rng(0)
    resampled = [np.abs(residual[rng.integers(0, len(residual), len(residual))]).mean() for _ in range(1000)]
    low, high = np.percentile(resampled, [2.5, 97.5])
    summary = pd.DataFrame({"metric": ["mae", "rmse", "mean_residual"],
                            "value": [np.abs(residual).mean(), np.sqrt((residual ** 2).mean()), residual.mean()],
                            "ci95_low": [low, np.nan, np.nan], "ci95_high": [high, np.nan, np.nan]})
    order = np.argsort(-np.abs(residual), kind="stable")[:top]
    worst = pd.DataFrame({"id": predictions.ids[order], "target": target[order], "prediction": predicted[order],
                          "residual": residual[order]})
    edges = np.unique(np.quantile(target, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, target, side="right") - 1, 0, max(len(edges) - 2, 0))
    per_bin = pd.DataFrame({"bin": which, "abs_error": np.abs(residual), "residual": residual}).groupby("bin").agg(
        samples=("residual", "size"), mae=("abs_error", "mean"), mean_residual=("residual", "mean")).reset_index()
    per_bin.insert(1, "target_from", edges[per_bin["bin"]])
    per_bin.insert(2, "target_to", edges[np.minimum(per_bin["bin"] + 1, len(edges) - 1)])
    return {"summary": summary, "worst_residuals": worst, "per_target_bin": per_bin.drop(columns="bin"),
            "residuals": (target, residual)}


def analyze_multilabel(predictions, thresholds=0.5) -> dict:
    """Per label: support, F1 at the threshold in use, average precision, and the threshold."""
    import pandas as pd
    from sklearn.metrics import average_precision_score, f1_score

    table = predictions.table
    names = [c[len("prob_"):] for c in table.columns if c.startswith("prob_")]
    probs = table[[f"prob_{n}" for n in names]].to_numpy(np.float64)
    tags = table["target"].fillna("").astype(str).str.split()
    truth = np.array([[n in row for n in names] for row in tags], dtype=bool)
    cuts = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(names),))
    chosen = probs >= cuts
    rows = [{"label": n, "support": int(truth[:, k].sum()), "threshold": float(cuts[k]),
             "f1": f1_score(truth[:, k], chosen[:, k], zero_division=0),
             "average_precision": average_precision_score(truth[:, k], probs[:, k]) if truth[:, k].any() else np.nan}
            for k, n in enumerate(names)]
    per_label = pd.DataFrame(rows).sort_values("f1", kind="stable").reset_index(drop=True)
    summary = pd.DataFrame({"metric": ["micro_f1", "macro_f1", "mean_average_precision"],
                            "value": [f1_score(truth, chosen, average="micro", zero_division=0),
                                      per_label["f1"].mean(), per_label["average_precision"].mean()]})
    return {"summary": summary, "per_label": per_label}


def multilabel_thresholds(predictions) -> float | list[float]:
    """The thresholds inference uses: k-fold's tuned ones (oof_thresholds.json), else the task's."""
    if predictions.run_dir is not None and (predictions.run_dir / "oof_thresholds.json").is_file():
        return json.loads((predictions.run_dir / "oof_thresholds.json").read_text())
    task = (predictions.config or {}).get("task")
    return task.get("args", {}).get("thresholds", 0.5) if isinstance(task, dict) else 0.5


def analyze_multihead(predictions, top: int = 25, progress: bool = False) -> dict:
    """Each head analysed as a classifier (its ``prob_<head>_<k>`` and ``target_<head>`` columns; its
    calibration is not saved: inference.py applies a temperature to single-label runs only), and the
    accuracy of the combined class (every head right) with its bootstrap interval."""
    from utils.analysis.sources import Predictions

    table = predictions.table
    heads = [c[len("target_"):] for c in table.columns if c.startswith("target_")]
    results, all_right = {}, np.ones(len(table), dtype=bool)
    for head in heads:
        columns = sorted((c for c in table.columns if re.fullmatch(rf"prob_{re.escape(head)}_\d+", c)),
                         key=lambda c: int(c.rsplit("_", 1)[1]))
        probs = np.ascontiguousarray(table[columns].to_numpy(np.float32))
        targets = table[f"target_{head}"].to_numpy(np.int64)
        part = Predictions(f"{predictions.name}:{head}", predictions.source, "classification",
                           table[["id"]], probs=probs, targets=targets,
                           classes=[str(k) for k in range(len(columns))])
        results[head] = analyze_classification(part, top, progress) | {"calibration": calibrate(probs, targets)}
        all_right &= probs.argmax(axis=1) == targets
    combined = table["prediction"].to_numpy() == table["target"].to_numpy()
    one_hot = np.stack([1 - combined, combined], axis=1).astype(np.float32)
    summary = bootstrap_summary(combined.astype(np.int64), np.ones(len(table), dtype=np.int64),
                                sample_losses(np.clip(one_hot, 1e-12, 1), np.ones(len(table), np.int64)), 2)
    return {"heads": results, "combined_summary": summary.iloc[:1], "correct": all_right.astype(np.float64)}
