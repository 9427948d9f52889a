import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from utils.data.on_device import DeviceData, DeviceLoader
from utils.data.samplers import make_epoch_sampler
from utils.data.splits import holdout_splitter, split_indices
from utils.data.workers import loaders_with_workers
from utils.distributed import device_of_this_process, get_rank, get_world_size
from utils.seeding import worker_init_fn

logger = logging.getLogger(__name__)

class BaseDataLoader(DataLoader):
    """A DataLoader that holds out a validation split and can resume in the middle of an epoch.

    Args:
        dataset: a BaseDataset (the config's "dataset" section is built and passed in).
        batch_size: samples per batch in each process.
        shuffle: shuffle the training part each epoch, in an order set by (seed, epoch).
        validation_split: the part held out for validation: a fraction in [0, 1), a count of
            samples, or a list of dataset indices (k-fold passes these). 0 means no validation.
        num_workers: worker processes; the results do not depend on it.
        stratify: keep the class proportions in the split (needs ``dataset.targets``).
        seed: the run seed; it sets the shuffle order and the augmentation of every sample.
        split_seed: the seed of the validation split, kept apart so the split stays fixed when the
            run seed changes.
        pin_memory: pinned host memory for fast copies to the GPU; defaults to True on CUDA.
        persistent_workers: keep the worker processes from one epoch to the next (default: with workers).
        prefetch_factor: batches each worker loads ahead (default: 4 on CUDA, torch's 2 otherwise).
        on_device: hold the whole data set as tensors on the device (the process's GPU, else the CPU)
            and draw and transform the batches there, in the same order; no worker processes
            (utils/data/on_device.py).
        group_split: with ``dataset.groups``, keep every group on one side of the validation split.
        sampler: None (every training sample once per epoch) or "balanced": draw with replacement,
            each class equally likely (utils/data/samplers.py); ``shuffle`` is then ignored.
        samples_per_epoch: draws per epoch of the balanced sampler (default: the training part's size).
        stratify_labels: what a stratified split keeps in proportion, one label per sample (default:
            ``dataset.targets``); train.py passes the task's (a MultiHead's combined class).

    Examples:
        >>> loader = BaseDataLoader(DigitsDataset(), batch_size=64, validation_split=0.1)
        >>> valid_loader = loader.split_validation()
    """

    def __init__(
        self,
        dataset,
        batch_size: int = 32,
        shuffle: bool = True,
        validation_split: float | int | Sequence[int] = 0.0,
        num_workers: int = 0,
        stratify: bool = False,
        seed: int = 0,
        split_seed: int = 0,
        drop_last: bool = False,
        pin_memory: bool | None = None,
        collate_fn=None,
        group_split: bool = True,
        sampler: str | None = None,
        samples_per_epoch: int | None = None,
        persistent_workers: bool | None = None,
        prefetch_factor: int | None = None,
        on_device: bool = False,
        stratify_labels=None,
    ):
        check_loader_args(batch_size, num_workers, prefetch_factor, on_device)
        if len(dataset) == 0:
            raise ValueError("dataset: is empty")
        # Only the labelled part is split; samples after it (pseudo-labels) only ever train.
        labelled = getattr(dataset, "labelled", dataset)
        train_indices, self.valid_indices = split_indices(labelled, validation_split, stratify, split_seed,
                                                          group_split, stratify_labels)
        if len(dataset) > len(labelled):
            train_indices = np.concatenate([train_indices, np.arange(len(labelled), len(dataset))])
        self.train_indices = train_indices
        self.splitter = holdout_splitter(labelled, validation_split, stratify, group_split)  # for the log
        self.sampler_kwargs = {"shuffle": shuffle, "seed": seed}
        self.epoch_sampler = make_epoch_sampler(dataset, train_indices, shuffle, seed, sampler, samples_per_epoch)
        self.device_data = DeviceData(dataset, device_of_this_process()) if on_device else None
        if on_device and num_workers:
            logger.info("data_loader.args.on_device: the batches are drawn on the device, without the %d "
                        "worker processes of num_workers", num_workers)
        num_workers = 0 if on_device else num_workers
        cuda = torch.cuda.is_available() and not on_device
        self.loader_kwargs = {
            "batch_size": batch_size,
            "num_workers": num_workers,
            "collate_fn": collate_fn,
            "pin_memory": cuda if pin_memory is None else pin_memory and not on_device,
            "worker_init_fn": worker_init_fn,
            "persistent_workers": num_workers > 0 if persistent_workers is None or on_device else persistent_workers,
            "prefetch_factor": (prefetch_factor or (4 if cuda else None)) if num_workers > 0 else None,
        }
        # A generator of its own: creating an iterator never draws from the global torch RNG.
        generator = torch.Generator().manual_seed(seed)
        super().__init__(dataset, sampler=self.epoch_sampler, drop_last=drop_last, generator=generator,
                         **self.loader_kwargs)
        if num_workers > 0:
            loaders_with_workers.add(self)

    def __iter__(self):
        if self.device_data is None:
            return super().__iter__()
        return self.device_data.batches(self.epoch_sampler, self.batch_size, self.drop_last, train=True)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of ``epoch``; call it before iterating over the epoch."""
        self.epoch_sampler.set_epoch(epoch)
        self.epoch_sampler.skip = 0

    def skip_batches(self, count: int) -> None:
        """Start the current epoch after its first ``count`` batches, without loading them."""
        self.epoch_sampler.skip = count * self.batch_size

    def split_validation(self) -> DataLoader | None:
        """The validation loader (evaluation transform, fixed order), or None without a split."""
        if len(self.valid_indices) == 0:
            return None
        # Each process validates its own share, without the padding a DistributedSampler adds,
        # so that no sample is counted twice.
        shard = self.valid_indices[get_rank() :: get_world_size()]
        if self.device_data is not None:
            return DeviceLoader(self.device_data, shard, self.batch_size, Subset(self.dataset.evaluation(), shard))
        loader = DataLoader(Subset(self.dataset.evaluation(), shard), shuffle=False, **self.loader_kwargs,
                            generator=torch.Generator().manual_seed(self.sampler_kwargs["seed"]))
        if self.num_workers > 0:
            loaders_with_workers.add(loader)
        return loader


def check_loader_args(batch_size, num_workers, prefetch_factor, on_device) -> None:
    """A ValueError naming the argument for a value the loader cannot use."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers: must be an integer >= 0, got {num_workers!r}")
    if prefetch_factor is not None and (isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int)
                                        or prefetch_factor < 1 or num_workers == 0):
        raise ValueError(f"prefetch_factor: must be a positive integer, with num_workers > 0; got {prefetch_factor!r}")
    if not isinstance(on_device, bool):
        raise ValueError(f"on_device: must be true or false, got {on_device!r}")
