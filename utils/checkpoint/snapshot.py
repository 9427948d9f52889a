"""A copy of a checkpoint's state in host memory, taken while training waits, written while it goes on.

``state_dict()`` returns tensors that share memory with the live parameters and optimizer state, which
the next step changes: a checkpoint written in the background must be written from a copy. The copy
goes into buffers kept from one save to the next (pinned host memory for GPU tensors, so the copies
are asynchronous and one synchronize ends them all), and a tensor held under two names (tied weights)
is copied once and saved once, as ``torch.save`` would have saved it.
"""
import numpy as np
import torch


class StateSnapshot:
    """Copies nested dicts, lists and tuples, with every tensor and numpy array copied into host memory.

    The buffers are reused by the next ``copy``: the previous copy must be written (or dropped) first.

    Examples:
        >>> snapshot = StateSnapshot()
        >>> frozen = snapshot.copy({"state_dict": model.state_dict(), "epoch": 3})
        >>> torch.save(frozen, "last.pth")   # in another thread, while the model trains on
    """

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}

    def copy(self, state):
        """A copy of ``state`` that shares no memory with it; waits until every device copy has landed."""
        devices = set()
        copied = self._copy(state, (), {}, devices)
        for device in devices:
            torch.cuda.synchronize(device)  # the non-blocking copies into pinned memory are done
        return copied

    def _copy(self, value, where: tuple, seen: dict, devices: set):
        if isinstance(value, torch.Tensor):
            if id(value) not in seen:  # the same tensor under two names stays one tensor
                seen[id(value)] = self._copy_tensor(value, where, devices)
            return seen[id(value)]
        if isinstance(value, dict):
            return {key: self._copy(item, (*where, key), seen, devices) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            items = [self._copy(item, (*where, i), seen, devices) for i, item in enumerate(value)]
            if isinstance(value, list):
                return items
            return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # named tuples too
        if isinstance(value, np.ndarray):
            return value.copy()
        return value  # numbers, strings, None: immutable

    def _copy_tensor(self, tensor: torch.Tensor, where: tuple, devices: set) -> torch.Tensor:
        tensor = tensor.detach()
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_meta:
            return tensor.to("cpu", copy=True)  # rare kinds: a plain copy, no reused buffer
        buffer = self._buffers.get(where)
        if (buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype
                or buffer.stride() != tensor.stride()):
            buffer = torch.empty_like(tensor, device="cpu", pin_memory=tensor.is_cuda)
            self._buffers[where] = buffer
        buffer.copy_(tensor, non_blocking=tensor.is_cuda)
        if tensor.is_cuda:
            devices.add(tensor.device)
        return buffer
