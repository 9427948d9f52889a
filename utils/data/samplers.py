"""Samplers of the training order: ``EpochSampler`` (every sample once per epoch) and the balanced
sampler for imbalanced classes. Both keep one contract: the order of an epoch comes from (seed, epoch) alone, each DDP process reads its
own share of it, and ``skip`` resumes in the middle of an epoch.
"""
import math
from collections.abc import Sequence

import numpy as np
from torch.utils.data import DistributedSampler

from utils.distributed import get_rank, get_world_size
from utils.seeding import sample_seeds


def balancing_keys(targets) -> np.ndarray:
    """The value each sample is balanced on: its class, or for 2-D targets (multi-label, multi-head)
    its combination of labels (each distinct row of targets is one "class")."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        return np.unique(targets, return_inverse=True)[1]
    return np.unique(targets.reshape(len(targets), -1), axis=0, return_inverse=True)[1].reshape(-1)


def balanced_weights(keys: np.ndarray) -> np.ndarray:
    """The probability of drawing each sample: inversely proportional to its class's frequency,
    so every class is drawn equally often on average."""
    counts = np.bincount(keys)
    weights = 1.0 / counts[keys]
    return weights / weights.sum()


class BalancedEpochSampler:
    """Draws each epoch's training samples with replacement, each class equally likely.

    The draw of epoch e is ``numpy.random.default_rng([seed, e])``: the same on every process and
    for any number of workers. It is padded to a multiple of the process count by wrapping around,
    and process r reads draws r, r + P, r + 2P, ... : the processes share it without overlap.
    Each draw's augmentation seed comes from its position in the epoch's draw, so a sample drawn
    twice is augmented two ways.

    Args:
        indices: the dataset indices of the training part.
        targets: their targets (class indices; 2-D for multi-label or multi-head: balanced on the
            combination of labels).
        seed: the run seed.
        num_replicas / rank: the DDP processes.
        samples_per_epoch: draws per epoch over all processes (default: the training part's size).
    """

    def __init__(self, indices: Sequence[int], targets, seed: int, num_replicas: int, rank: int,
                 samples_per_epoch: int | None = None):
        self.indices = np.asarray(indices)
        self.probabilities = balanced_weights(balancing_keys(targets))
        self.seed, self.epoch, self.skip = seed, 0, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.total = samples_per_epoch or len(self.indices)
        self.num_samples = math.ceil(self.total / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self) -> np.ndarray:
        """Positions (into ``indices``) of the whole epoch's draw, before it is shared out."""
        rng = np.random.default_rng([self.seed % 2**32, self.epoch])
        draw = rng.choice(len(self.indices), size=self.total, replace=True, p=self.probabilities)
        padding = self.num_samples * self.num_replicas - self.total
        return np.concatenate([draw, draw[:padding]])

    def __iter__(self):
        order = np.arange(self.num_samples * self.num_replicas)[self.rank :: self.num_replicas][self.skip :]
        indices = self.indices[self.draw()[order]]
        seeds = sample_seeds(self.seed, self.epoch, order)
        return iter(zip(indices.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.num_samples - self.skip


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
