"""Calibration of class probabilities: the expected calibration error, reliability bins, and one
temperature fitted on held-out logits (temperature scaling, Guo et al. 2017).

A temperature T divides the logits before the softmax: T > 1 softens an overconfident model, T < 1
sharpens an underconfident one; the predicted class never changes. ``analyze.py`` fits it and saves
``calibration.json`` with the run; ``inference.py`` applies it (see ``TemperatureScaled``).
"""
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from utils.errors import CheckpointError
from utils.util import write_json

logger = logging.getLogger(__name__)

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
    """Mean cross-entropy of ``logits / temperature`` (in float64 sums, chunked: no N x C float64 copy)."""
    total = 0.0
    for start in range(0, len(logits), 65536):
        chunk = torch.from_numpy(np.ascontiguousarray(logits[start:start + 65536]))
        target = torch.from_numpy(np.asarray(targets[start:start + 65536], dtype=np.int64))
        total += float(torch.nn.functional.cross_entropy(chunk / temperature, target, reduction="sum"))
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
    "bins_before", "bins_after", "probs_after"}``.
    """
    logits = log_probabilities(probs)
    temperature = fit_temperature(logits, targets)
    calibrated = softmax(logits, temperature)
    return {"temperature": temperature, "samples": len(targets),
            "ece_before": expected_calibration_error(probs, targets),
            "ece_after": expected_calibration_error(calibrated, targets),
            "nll_before": negative_log_likelihood(logits, targets),
            "nll_after": negative_log_likelihood(logits, targets, temperature),
            "bins_before": reliability_bins(probs, targets), "bins_after": reliability_bins(calibrated, targets),
            "probs_after": calibrated}


def save_calibration(run_dir: str | Path, result: dict, fitted_on: str) -> Path:
    """Write ``calibration.json`` (the temperature and the figures it was judged by) into ``run_dir``."""
    path = Path(run_dir) / CALIBRATION_FILE
    keys = ("temperature", "samples", "ece_before", "ece_after", "nll_before", "nll_after")
    write_json({"fitted_on": fitted_on} | {key: result[key] for key in keys}, path)
    return path


def load_temperature(run_dir: str | Path) -> float | None:
    """The temperature saved in ``run_dir/calibration.json``, or None when there is none."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        temperature = float(json.loads(path.read_text())["temperature"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(str(path), f"is not a calibration file ({error}); delete it or run analyze.py "
                                         "again") from None
    if not math.isfinite(temperature) or temperature <= 0:
        raise CheckpointError(str(path), f"temperature must be a positive number, got {temperature}")
    return temperature


class TemperatureScaled(torch.nn.Module):
    """A model whose logits are divided by a fitted temperature.

    Examples:
        >>> model = TemperatureScaled(model, load_temperature(run_dir))
    """

    def __init__(self, model: torch.nn.Module, temperature: float):
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.model(*args, **kwargs) / self.temperature
