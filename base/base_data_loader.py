import atexit
import logging
import weakref
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from base.dist import get_rank, get_world_size
from base.samplers import BalancedEpochSampler
from base.seeding import sample_seeds, worker_init_fn
from base.splits import group_holdout, holdout_splitter

logger = logging.getLogger(__name__)

_loaders_with_workers = weakref.WeakSet()


@atexit.register
def _stop_workers() -> None:
    """Stop the worker processes of every loader before the program exits.

    Workers ignore SIGTERM (see base.seeding.worker_init_fn), so multiprocessing's own exit
    handler, which runs after this one, could not stop them.
    """
    for loader in list(_loaders_with_workers):
        iterator = getattr(loader, "_iterator", None)  # persistent workers live in the loader's iterator
        if iterator is not None:
            iterator._shutdown_workers()


class EpochSampler(DistributedSampler):
    """The training order of an epoch, from (seed, epoch) alone, shared out over the DDP processes.

    It yields ``(dataset index, sample seed)`` keys, so a sample's augmentation depends only on
    (seed, epoch, index). ``skip`` drops the first samples of the epoch's order without loading them,
    to resume in the middle of an epoch.
    """

    def __init__(self, indices: Sequence[int], shuffle: bool, seed: int, num_replicas: int, rank: int):
        super().__init__(indices, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.indices = indices
        self.skip = 0

    def __iter__(self):
        positions = list(super().__iter__())[self.skip :]
        indices = np.asarray(self.indices)[positions]
        seeds = sample_seeds(self.seed, self.epoch, indices)
        return iter(zip(indices.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.num_samples - self.skip


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
        group_split: with ``dataset.groups``, keep every group on one side of the validation split.
        sampler: None (every training sample once per epoch) or "balanced": draw with replacement,
            each class equally likely (base/samplers.py); ``shuffle`` is then ignored.
        samples_per_epoch: draws per epoch of the balanced sampler (default: the training part's size).

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
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers: must be an integer >= 0, got {num_workers!r}")
        if len(dataset) == 0:
            raise ValueError("dataset: is empty")
        train_indices, self.valid_indices = split_indices(dataset, validation_split, stratify, split_seed,
                                                          group_split)
        self.train_indices = train_indices
        self.splitter = holdout_splitter(dataset, validation_split, stratify, group_split)  # for the log
        self.sampler_kwargs = {"shuffle": shuffle, "seed": seed}
        self.epoch_sampler = make_epoch_sampler(dataset, train_indices, shuffle, seed, sampler, samples_per_epoch)
        pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.loader_kwargs = {
            "batch_size": batch_size,
            "num_workers": num_workers,
            "collate_fn": collate_fn,
            "pin_memory": pin_memory,
            "worker_init_fn": worker_init_fn,
            "persistent_workers": num_workers > 0,
        }
        # A generator of its own: creating an iterator never draws from the global torch RNG.
        generator = torch.Generator().manual_seed(seed)
        super().__init__(dataset, sampler=self.epoch_sampler, drop_last=drop_last, generator=generator,
                         **self.loader_kwargs)
        if num_workers > 0:
            _loaders_with_workers.add(self)

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
        loader = DataLoader(Subset(self.dataset.evaluation(), shard), shuffle=False, **self.loader_kwargs,
                            generator=torch.Generator().manual_seed(self.sampler_kwargs["seed"]))
        if self.num_workers > 0:
            _loaders_with_workers.add(loader)
        return loader


def make_epoch_sampler(dataset, train_indices, shuffle: bool, seed: int, sampler: str | None,
                       samples_per_epoch: int | None):
    """The training order: every sample once per epoch (EpochSampler), or the balanced draw."""
    if sampler not in (None, "balanced"):
        raise ValueError(f"sampler: must be null or 'balanced', got {sampler!r}")
    if samples_per_epoch is not None and (sampler is None or isinstance(samples_per_epoch, bool)
                                          or not isinstance(samples_per_epoch, int) or samples_per_epoch < 1):
        raise ValueError("samples_per_epoch: must be a positive integer, with sampler 'balanced'; "
                         f"got {samples_per_epoch!r}")
    if sampler is None:
        return EpochSampler(train_indices, shuffle, seed, get_world_size(), get_rank())
    if getattr(dataset, "targets", None) is None:
        raise ValueError("sampler: 'balanced' needs a dataset with targets")
    targets = np.asarray(dataset.targets)[train_indices]
    return BalancedEpochSampler(train_indices, targets, seed, get_world_size(), get_rank(), samples_per_epoch)


def split_indices(dataset, validation_split, stratify: bool, split_seed: int,
                  group_split: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Dataset indices for training and validation. The split draws from its own generator.

    With ``dataset.groups`` (and ``group_split``), whole groups go to one side (base/splits.py).
    """
    n = len(dataset)
    if isinstance(validation_split, (list, tuple, np.ndarray, torch.Tensor)):
        valid = np.asarray(validation_split, dtype=np.int64)
        if valid.size and (valid.min() < 0 or valid.max() >= n):
            raise ValueError(f"validation_split: indices must lie in [0, {n}), the dataset's size")
        train = np.setdiff1d(np.arange(n), valid)
    else:
        n_valid = validation_count(validation_split, n)
        if n_valid == 0:
            return np.arange(n), np.arange(0)
        groups = getattr(dataset, "groups", None) if group_split else None
        if stratify and getattr(dataset, "targets", None) is None:
            raise ValueError("stratify: needs a dataset with targets; set it to false")
        if groups is not None:
            train, valid = group_holdout(getattr(dataset, "targets", None), groups, n_valid, stratify, split_seed)
        elif stratify:
            from sklearn.model_selection import train_test_split

            try:
                train, valid = train_test_split(
                    np.arange(n), test_size=n_valid, stratify=np.asarray(dataset.targets), random_state=split_seed
                )
            except ValueError as error:  # e.g. fewer validation samples than classes
                logger.warning("validation_split: a stratified split cannot be made (%s); using a random split",
                               str(error).rstrip("."))
                stratify = False
        if groups is None and not stratify:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).numpy()
            train, valid = order[n_valid:], order[:n_valid]
        train, valid = np.sort(train), np.sort(valid)
    if len(train) == 0:
        raise ValueError(f"validation_split: leaves no training data (the dataset has {n} samples)")
    return train, valid


def validation_count(validation_split: float | int, n: int) -> int:
    """How many of ``n`` samples a fraction or a count holds out."""
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)):
        raise ValueError(f"validation_split: must be a fraction, a count or a list, got {validation_split!r}")
    if isinstance(validation_split, int):
        if not 0 <= validation_split < n:
            raise ValueError(f"validation_split: a count must lie in [0, {n}), the dataset's size; "
                             f"got {validation_split}")
        return validation_split
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split: a fraction must lie in [0, 1), got {validation_split}")
    return max(1, round(n * validation_split)) if validation_split > 0 else 0
