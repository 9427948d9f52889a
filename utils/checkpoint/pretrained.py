"""Pretrained weights from a local file: tensors only, a head of another shape left fresh.

The files people keep on a cluster without internet are a model's ``state_dict`` saved as
``.safetensors`` (safetensors.torch.save_file) or ``.pth`` / ``.bin`` (torch.save). Neither is read
with code execution: safetensors holds tensors only, and torch files are read with
``weights_only=True``, which refuses a pickle with code in it.
"""
import logging
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from utils.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)
SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def read_weights_file(path: str | Path, where: str = "arch.args.weights_file") -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read without running any code stored in it.

    A torch file that holds a full training checkpoint (``{"state_dict": ...}`` or ``{"model": ...}``)
    gives that state dict.

    Examples:
        >>> read_weights_file("weights/resnet18.a1_in1k.safetensors")["conv1.weight"].shape
        torch.Size([64, 3, 7, 7])
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(where, f"{path} is a folder: name the weights file in it")
    if not path.is_file():
        raise ConfigError(where, f"{path}: no such file")
    if path.suffix not in SUFFIXES:
        raise ConfigError(where, f"{path}: expected a {', '.join(SUFFIXES)} file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError):
            raise CheckpointError(str(path), f"cannot be read: it {_what_is_wrong(path, 'safetensors')}") from None
    with open(path, "rb") as file:
        start = file.read(4)
    if start[:4] != b"PK\x03\x04" and start[:1] != b"\x80":  # neither torch.save's zip nor a legacy pickle
        raise CheckpointError(str(path), f"cannot be read: it {_what_is_wrong(path)}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        raise CheckpointError(str(path), "refused: it holds objects other than tensors" +
                              (f" ({found.group(1)})" if found else "") + ", which could run code; "
                              "save only the state_dict (torch.save(model.state_dict(), path))") from None
    except Exception:
        raise CheckpointError(str(path), f"cannot be read: it {_what_is_wrong(path)}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise CheckpointError(str(path), "is not a state_dict (a dict of tensors)")
    return {key.removeprefix("module."): value for key, value in content.items()}


def _what_is_wrong(path: Path, expected: str = "torch") -> str:
    from utils.checkpoint.unreadable import describe_unreadable

    return describe_unreadable(path.read_bytes(), expected)


def load_matching(model: nn.Module, weights: dict[str, torch.Tensor], source: str,
                  strict: bool | None = None, where: str = "arch.args.weights_file") -> list[str]:
    """Load the tensors of ``weights`` that fit ``model``; the others keep their fresh values.

    Logs the keys the file lacks and the ones it has in another shape (a head for another number of
    classes) or that the model does not have. Fewer than half of the model's tensors fitting usually
    means the weights of another architecture: an error with ``strict`` True (set ``strict: false``
    to load them anyway), else a warning line. Returns the model's keys that kept their fresh values.

    Examples:
        >>> load_matching(model, read_weights_file("weights/resnet18.safetensors"), "resnet18", strict=True)
    """
    own = model.state_dict()
    fitting = {k: v for k, v in weights.items() if k in own and v.shape == own[k].shape}
    if not fitting:
        raise CheckpointError(source, f"none of its {len(weights)} tensors fit the model (keys like "
                                      f"{', '.join(list(weights)[:3])}; the model has {', '.join(list(own)[:3])})")
    if len(fitting) * 2 < len(own):
        few = f"only {len(fitting)} of the model's {len(own)} tensors fit {source}"
        if strict:
            raise ConfigError(where, f"{few}: the weights of another architecture? Set arch.args.strict to false "
                                     "to load them anyway")
        logger.warning("warning: %s: %s; the other %d keep their fresh values", where, few, len(own) - len(fitting))
    reshaped = sorted(k for k in weights if k in own and k not in fitting)
    unused = sorted(k for k in weights if k not in own)
    missing = sorted(k for k in own if k not in weights)
    model.load_state_dict(fitting, strict=False)
    logger.info("loaded %d of the model's %d tensors from %s", len(fitting), len(own), source)
    for what, keys in (("have another shape in the file (kept fresh)", reshaped),
                       ("are missing from the file (kept fresh)", missing),
                       ("of the file are not in the model (skipped)", unused)):
        if keys:
            logger.warning("%d tensors %s: %s%s", len(keys), what, ", ".join(keys[:8]),
                           ", ..." if len(keys) > 8 else "")
    return sorted(set(missing) | set(reshaped))
