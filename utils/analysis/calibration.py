"""Calibration of class probabilities: the expected calibration error, reliability bins, and one
temperature fitted on held-out logits (temperature scaling, Guo et al. 2017).

A temperature T divides the logits before the softmax: T > 1 softens an overconfident model, T < 1
sharpens an underconfident one; the predicted class never changes. ``analyze.py`` fits it and saves
``calibration.json`` with the run; ``inference.py`` applies it (utils/analysis/temperature.py).
NumPy only: torch's import alone would double the analysis' time and memory at 100,000 predictions.
"""
import json
import math
import os
from pathlib import Path

import numpy as np

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15


def log_probabilities(probs: np.ndarray) -> np.ndarray:
    """Logits equivalent to the class probabilities (softmax gives them back exactly: a per-row constant)."""
    return np.log(np.maximum(probs, 1e-12), dtype=np.float32)


def reliability_bins(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin (lo, hi]: samples, mean confidence and accuracy of the top class."""
    confidence = probs.max(axis=1).astype(np.float64)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges": np.linspace(0, 1, bins + 1), "count": count,
                "confidence": np.bincount(index, confidence, bins) / count,
                "accuracy": np.bincount(index, correct, bins) / count}


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: sum over confidence bins of (share of samples) x |accuracy - mean confidence|.

    Examples:
        >>> expected_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]))
        0.35
    """
    stats = reliability_bins(probs, targets, bins)
    filled = stats["count"] > 0
    gap = np.abs(stats["accuracy"][filled] - stats["confidence"][filled])
    return float((stats["count"][filled] / len(targets) * gap).sum())


def negative_log_likelihood(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``logits / temperature``, in chunks (no N x C float64 copy)."""
    total = 0.0
    for start in range(0, len(logits), 16384):
        scaled = logits[start:start + 16384].astype(np.float64) / temperature
        top = scaled.max(axis=1)
        log_sum = np.log(np.exp(scaled - top[:, None]).sum(axis=1)) + top
        total += float((log_sum - scaled[np.arange(len(scaled)), targets[start:start + 16384]]).sum())
    return total / len(logits)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature that minimizes the negative log-likelihood of ``logits / T`` (searched on log T).

    Examples:
        >>> fit_temperature(10 * logits, targets)  # ten times too confident: about 10
    """
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda log_t: negative_log_likelihood(logits, targets, math.exp(log_t)),
                             bounds=(math.log(0.02), math.log(50.0)), method="bounded",
                             options={"xatol": 1e-4})
    return float(math.exp(result.x))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float32."""
    scaled = logits / np.float32(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    np.exp(scaled, out=scaled)
    scaled /= scaled.sum(axis=1, keepdims=True)
    return scaled


def calibrate(probs: np.ndarray, targets: np.ndarray) -> dict:
    """Fit a temperature on held-out predictions; the error and the likelihood before and after.

    Returns ``{"temperature", "samples", "ece_before", "ece_after", "nll_before", "nll_after",
    "bins_before", "bins_after"}``.
    """
    logits = log_probabilities(probs)
    temperature = fit_temperature(logits, targets)
    calibrated = softmax(logits, temperature)
    return {"temperature": temperature, "samples": len(targets),
            "ece_before": expected_calibration_error(probs, targets),
            "ece_after": expected_calibration_error(calibrated, targets),
            "nll_before": negative_log_likelihood(logits, targets),
            "nll_after": negative_log_likelihood(logits, targets, temperature),
            "bins_before": reliability_bins(probs, targets), "bins_after": reliability_bins(calibrated, targets)}


def save_calibration(run_dir: str | Path, result: dict, fitted_on: str) -> Path:
    """Write ``calibration.json`` (the temperature and the figures it was judged by) into ``run_dir``,
    atomically: inference.py never reads half a file."""
    path = Path(run_dir) / CALIBRATION_FILE
    keys = ("temperature", "samples", "ece_before", "ece_after", "nll_before", "nll_after")
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps({"fitted_on": fitted_on} | {key: result[key] for key in keys}, indent=4) + "\n")
    os.replace(temp, path)
    return path
