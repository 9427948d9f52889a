"""Averaging the weights of several checkpoints of one model (top-k averaging, the standalone script).

The mean of each floating-point tensor is taken in float64 and cast back to the tensor's dtype, so
the result does not depend on the order of the files. A tensor that cannot be averaged (an integer
counter such as BatchNorm's ``num_batches_tracked``) takes its largest value: the count of the
checkpoint trained longest.
"""
from pathlib import Path

import torch

from utils.checkpoint.files import FORMAT_VERSION, strip_module_prefix
from utils.errors import CheckpointError


def average_state_dicts(state_dicts: list[dict], names: list[str] | None = None) -> dict:
    """The element-wise mean of state dicts with the same keys, shapes and dtypes.

    ``names`` name the state dicts in the error raised when they do not match.

    Examples:
        >>> average_state_dicts([{"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])}])
        {'w': tensor([1.5000])}
    """
    if not state_dicts:
        raise ValueError("no state dicts to average")
    names = names or [f"state dict {i}" for i in range(len(state_dicts))]
    first = strip_module_prefix(state_dicts[0])
    cleaned = [first]
    for name, state_dict in zip(names[1:], state_dicts[1:]):
        state_dict = strip_module_prefix(state_dict, first)
        _check_same_tensors(first, state_dict, names[0], name)
        cleaned.append(state_dict)
    averaged = {}
    for key, tensor in first.items():
        stacked = torch.stack([state_dict[key].detach().cpu() for state_dict in cleaned])
        if tensor.is_floating_point() or tensor.is_complex():
            mean = stacked.to(torch.complex128 if tensor.is_complex() else torch.float64).mean(dim=0)
            averaged[key] = mean.to(tensor.dtype).to(tensor.device)
        else:
            averaged[key] = stacked.amax(dim=0).to(tensor.device)
    return averaged


def _check_same_tensors(first: dict, other: dict, first_name: str, name: str) -> None:
    if set(first) != set(other):
        missing, extra = sorted(set(first) - set(other)), sorted(set(other) - set(first))
        what = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which {first_name} lacks"
        raise CheckpointError(name, f"is not the same model as {first_name}: it {what}")
    for key, tensor in first.items():
        if tensor.shape != other[key].shape or tensor.dtype != other[key].dtype:
            raise CheckpointError(name, f"is not the same model as {first_name}: {key!r} is "
                                        f"{tuple(other[key].shape)} {other[key].dtype}, not "
                                        f"{tuple(tensor.shape)} {tensor.dtype}")


def check_same_arch(checkpoints: list[dict], paths: list[Path]) -> None:
    """Checkpoints of one architecture: the same model class and the same ``arch`` config section."""
    first, first_path = checkpoints[0], paths[0]
    for checkpoint, path in zip(checkpoints[1:], paths[1:]):
        if checkpoint["arch"] != first["arch"]:
            raise CheckpointError(str(path), f"holds a {checkpoint['arch']} model, but {first_path} a "
                                             f"{first['arch']}: only checkpoints of one model can be averaged")
        own, other = checkpoint.get("config", {}).get("arch"), first.get("config", {}).get("arch")
        if own != other:
            raise CheckpointError(str(path), f"has arch {own}, but {first_path} has {other}: only checkpoints "
                                             "of one model can be averaged")


def weights_checkpoint(template: dict, state_dict: dict, metrics: dict, averaged_from: list[str]) -> dict:
    """A checkpoint holding ``state_dict`` and the description of ``template``'s run (config, classes,
    loss arguments), without its training state: what inference.py reads, and not a point to resume from.
    """
    return {
        "format_version": FORMAT_VERSION,
        "arch": template["arch"],
        "epoch": template.get("epoch", 0),
        "batches_done": 0,
        "state_dict": state_dict,
        "config": template["config"],
        "metrics": metrics,
        "classes": template.get("classes"),
        "loss_args": template.get("loss_args", {}),
        "ema": None,  # the averaged weights are the model's own
        "averaged_from": averaged_from,
    }
