"""Applying a fitted temperature at prediction time: inference.py reads the run's calibration.json."""
import json
import math
from pathlib import Path

import torch

from utils.analysis.calibration import CALIBRATION_FILE
from utils.errors import CheckpointError


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
