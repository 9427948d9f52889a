"""Small helpers: JSON files, the choice of device, moving batches, mixed precision."""
import contextlib
import json
import logging
import os
from pathlib import Path

import torch

from utils.errors import ConfigError

logger = logging.getLogger(__name__)


def read_json(path: str | Path) -> dict:
    """Read a JSON file; a missing file or invalid JSON is a ConfigError with the line and column, and
    a key given twice in one object (JSON would silently keep the last) one with the key and its line.

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
        return json.loads(text, object_pairs_hook=_refuse_duplicates)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}:{error.colno}", f"invalid JSON: {error.msg}") from None
    except _DuplicateKey as duplicate:
        line = _line_of_second(text, duplicate.key)
        raise ConfigError(f"{path}:{line}" if line else str(path),
                          f"the key {duplicate.key!r} is given twice in one object (JSON would keep only the "
                          "last): remove one") from None


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list) -> dict:
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _line_of_second(text: str, key: str) -> int | None:
    """The line of the duplicate ``key``: the first line where it is given a second time inside the
    same object (tracked by the nesting of braces, strings skipped by the JSON scanner)."""
    stack, i = [set()], 0
    while i < len(text):
        char = text[i]
        if char == '"':
            string, end = json.decoder.scanstring(text, i + 1)
            if text[end:].lstrip().startswith(":"):  # a key
                if string == key and string in stack[-1]:
                    return text.count("\n", 0, i) + 1
                stack[-1].add(string)
            i = end
            continue
        if char in "{[":
            stack.append(set())
        elif char in "}]" and len(stack) > 1:
            stack.pop()
        i += 1
    return None


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


def to_device(batch, device: torch.device, channels_last: bool = False):
    """Move a batch to ``device``: a tensor, or a tuple, list or dict of them (nested too).

    Image batches (4-D tensors) become channels-last when asked; anything else is left as it is.

    Examples:
        >>> data = to_device({"image": images, "mask": masks}, torch.device("cuda"))
    """
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {key: to_device(value, device, channels_last) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(value, device, channels_last) for value in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def is_image_batch(batch) -> bool:
    return isinstance(batch, torch.Tensor) and batch.dim() == 4


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp) -> torch.dtype | None:
    """The autocast dtype of ``trainer.amp`` ("bf16", "fp16"), or None when it is off."""
    return AMP_DTYPES.get(amp)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on the device's type, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
