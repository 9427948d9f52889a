"""Small helpers: JSON files and the choice of device."""
import json
import logging
import os
from pathlib import Path

import torch

from utils.errors import ConfigError

logger = logging.getLogger(__name__)


def read_json(path: str | Path) -> dict:
    """Read a JSON file; a missing file or invalid JSON is a ConfigError with the line and column.

    A UTF-8 byte-order mark (as Windows Notepad writes) is accepted.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found") from None
    except IsADirectoryError:
        raise ConfigError(str(path), "is a folder, not a config file") from None
    except OSError as error:
        raise ConfigError(str(path), f"cannot read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(str(path), f"is not UTF-8 text (byte {error.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}:{error.colno}", f"invalid JSON: {error.msg}") from None


def write_json(content: dict, path: str | Path) -> None:
    """Write JSON with indentation, atomically (a temporary file, then a rename)."""
    path = Path(path)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(content, indent=4) + "\n")
    os.replace(temp, path)


def prepare_device(n_gpu: int) -> tuple[torch.device, list[int]]:
    """Pick the device: the first of ``n_gpu`` CUDA GPUs when there are any, else the CPU.

    Returns the device and the GPU ids for DataParallel. Asking for more GPUs than there are
    uses those there are, with a warning.

    Examples:
        >>> device, device_ids = prepare_device(config["n_gpu"])
    """
    available = torch.cuda.device_count()
    if n_gpu > 0 and available == 0:
        logger.debug("no CUDA GPU found: using the CPU")
        n_gpu = 0
    if n_gpu > available:
        logger.warning("n_gpu is %d but only %d GPUs are available: using %d", n_gpu, available, available)
        n_gpu = available
    device = torch.device("cuda:0" if n_gpu > 0 else "cpu")
    return device, list(range(n_gpu))
