"""A whole data set held as tensors on the device, with batches drawn and transformed there.

For a data set that fits in device memory the input pipeline then costs almost nothing: no worker
processes, no host-to-device copy per batch. The order of the batches is the CPU path's: the
loader's sampler (seed, epoch) yields the same ``(index, sample seed)`` keys, so resuming in the
middle of an epoch and the DDP shares stay exact. The transforms run on whole batches; the random
ones draw each sample's choice from its sample seed, so a sample is augmented the same way whatever
batch or process it lands in (but not the same way as torchvision draws it on the CPU path).
A transform step of your own runs on the device when it has ``batched = True``: it is called as
``step(batch, seeds)``, with the batch's sample seeds as a tensor (None for evaluation batches).
"""
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import DataError

WHERE = "data_loader.args.on_device"
# Steps that do to a batch exactly what they do to each of its samples.
SAME_ON_A_BATCH = {"Normalize", "ToDtype", "ToPureTensor", "Identity", "ConvertImageDtype", "Resize", "CenterCrop"}
_GOLDEN = 0x9E3779B97F4A7C15


def uniforms(seeds: np.ndarray, step: int) -> np.ndarray:
    """One number in [0, 1) per sample seed, for transform step ``step`` (splitmix64 of the pair)."""
    with np.errstate(over="ignore"):
        x = seeds.astype(np.uint64) ^ np.uint64((step + 1) * _GOLDEN % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / 2.0**53


def batched_steps(transform) -> list:
    """The steps of a dataset transform (a ``v2.Compose``, one step or None), each checked to run on a batch."""
    if transform is None:
        return []
    steps = list(getattr(transform, "transforms", [transform]))
    for step in steps:
        name = type(step).__name__
        if not (getattr(step, "batched", False) or name in SAME_ON_A_BATCH or name in RANDOM_ON_A_BATCH):
            raise DataError(WHERE, f"the transform step {name} works on one sample at a time; on the device "
                                   f"only {', '.join(sorted(SAME_ON_A_BATCH | set(RANDOM_ON_A_BATCH)))} and steps "
                                   "with batched = True run; drop on_device or the step")
        if name == "RandomCrop" and (step.pad_if_needed or step.padding_mode not in ("constant", "reflect")
                                     or not isinstance(step.fill, (int, float))):
            raise DataError(WHERE, "RandomCrop runs on the device with padding, a number as fill and a "
                                   "constant or reflect padding_mode only")
    return steps


def _flip(batch: torch.Tensor, chosen: np.ndarray, dim: int) -> torch.Tensor:
    mask = torch.from_numpy(chosen).to(batch.device, non_blocking=True).view(-1, *[1] * (batch.dim() - 1))
    return torch.where(mask, batch.flip(dim), batch)


def _random_crop(step, batch: torch.Tensor, u: np.ndarray, v: np.ndarray) -> torch.Tensor:
    """Each sample cropped at its own position, as RandomCrop(size, padding) crops one image."""
    height, width = step.size
    if step.padding:  # torchvision keeps it as F.pad's [left, right, top, bottom]
        constant = step.padding_mode == "constant"
        batch = F.pad(batch, list(step.padding), mode=step.padding_mode, **({"value": step.fill} if constant else {}))
    tops = torch.from_numpy((u * (batch.shape[-2] - height + 1)).astype(np.int64)).to(batch.device)
    lefts = torch.from_numpy((v * (batch.shape[-1] - width + 1)).astype(np.int64)).to(batch.device)
    rows = (tops[:, None] + torch.arange(height, device=batch.device))[:, None, :, None]
    cols = (lefts[:, None] + torch.arange(width, device=batch.device))[:, None, None, :]
    samples = torch.arange(len(batch), device=batch.device)[:, None, None, None]
    channels = torch.arange(batch.shape[1], device=batch.device)[None, :, None, None]
    return batch[samples, channels, rows, cols]


RANDOM_ON_A_BATCH = {
    "RandomHorizontalFlip": lambda step, batch, seeds, i: _flip(batch, uniforms(seeds, i) < step.p, -1),
    "RandomVerticalFlip": lambda step, batch, seeds, i: _flip(batch, uniforms(seeds, i) < step.p, -2),
    "RandomCrop": lambda step, batch, seeds, i: _random_crop(step, batch, uniforms(seeds, i),
                                                              uniforms(seeds, i + 1000)),
}


def apply_steps(steps: list, batch: torch.Tensor, seeds: np.ndarray | None) -> torch.Tensor:
    """Run the checked steps on a batch; random ones draw from the samples' seeds."""
    for i, step in enumerate(steps):
        name = type(step).__name__
        if name in RANDOM_ON_A_BATCH:
            batch = RANDOM_ON_A_BATCH[name](step, batch, seeds, i) if seeds is not None else batch
        elif getattr(step, "batched", False):
            batch = step(batch, None if seeds is None else torch.from_numpy(seeds).to(batch.device))
        else:
            batch = step(batch)
    return batch


class DeviceData:
    """Every sample of ``dataset`` (as ``load`` returns it, before any transform) stacked on ``device``.

    Examples:
        >>> data = DeviceData(DigitsDataset(), torch.device("cuda"))
        >>> for data, target in data.batches(loader.epoch_sampler, 512, drop_last=False, train=True):
        ...     ...
    """

    def __init__(self, dataset, device: torch.device):
        self.dataset, self.device = dataset, device
        samples, targets = zip(*(dataset.load(index) for index in range(len(dataset))))
        try:
            inputs = torch.stack([torch.as_tensor(sample) for sample in samples])
            labels = torch.as_tensor(np.asarray(targets))
        except (TypeError, RuntimeError, ValueError) as error:
            raise DataError(WHERE, f"the samples cannot be stacked into one tensor ({error}); on_device needs "
                                   "tensors of one shape") from None
        needed = inputs.nbytes + labels.nbytes
        if device.type == "cuda" and needed > 0.8 * torch.cuda.mem_get_info(device)[0]:
            free = torch.cuda.mem_get_info(device)[0]
            raise DataError(WHERE, f"the data set needs {needed / 2**30:.1f} GiB, more than 80% of the "
                                   f"{free / 2**30:.1f} GiB free on {device}: drop on_device")
        self.inputs, self.targets = inputs.to(device), labels.to(device)
        self.train_steps = batched_steps(dataset.train_transform)
        self.eval_steps = batched_steps(dataset.eval_transform)

    def batches(self, keys, batch_size: int, drop_last: bool, train: bool) -> Iterator:
        """The batches of the sampler's ``(index, seed)`` keys (or plain indices), transformed on the device."""
        keys = list(keys)
        indices = np.asarray([key[0] if isinstance(key, tuple) else key for key in keys], dtype=np.int64)
        seeds = np.asarray([key[1] for key in keys], dtype=np.int64) if keys and isinstance(keys[0], tuple) else None
        count = len(keys) // batch_size if drop_last else math.ceil(len(keys) / batch_size)
        on_device = torch.from_numpy(indices).to(self.device)
        steps = self.train_steps if train and self.dataset.augment else self.eval_steps
        for start in range(0, count * batch_size, batch_size):
            chosen = on_device[start : start + batch_size]
            batch_seeds = None if seeds is None or not train else seeds[start : start + batch_size]
            yield apply_steps(steps, self.inputs[chosen], batch_seeds), self.targets[chosen]


class DeviceLoader:
    """An iterable of the device batches of fixed indices (the validation split): what a DataLoader is
    to the loop (``len``, ``dataset``, ``batch_size``)."""

    def __init__(self, data: DeviceData, indices, batch_size: int, dataset):
        self.data, self.indices, self.batch_size, self.dataset = data, list(indices), batch_size, dataset

    def __iter__(self) -> Iterator:
        return self.data.batches(self.indices, self.batch_size, drop_last=False, train=False)

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)
