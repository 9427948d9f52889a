"""BaseDataLoader: the validation split, its transform, and the shuffle order of each epoch."""
from collections import Counter

import numpy as np
import pytest
import torch

from base.base_data_loader import BaseDataLoader
from base.base_dataset import BaseDataset
from data_loader.data_loaders import DigitsDataLoader
from dataset.datasets import DigitsDataset


class IndexDataset(BaseDataset):
    """Sample i is the tensor i; targets cycle over ``classes`` classes with uneven counts."""

    def __init__(self, n: int = 50, classes: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.targets = [(i * i) % classes for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def load(self, index: int):
        return torch.tensor(index), self.targets[index]


def indices_of(loader) -> list[int]:
    return [int(i) for batch, _ in loader for i in batch]


def batches_of(loader) -> list[list[int]]:
    return [batch.tolist() for batch, _ in loader]


@pytest.fixture(scope="module")
def digits():
    return DigitsDataset(train=True)


# -- the size of the split -----------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_fraction(fraction):
    dataset = IndexDataset(101)
    loader = BaseDataLoader(dataset, batch_size=8, validation_split=fraction)
    assert len(loader.valid_indices) == round(101 * fraction)
    assert len(loader.train_indices) == 101 - round(101 * fraction)
    valid = loader.split_validation()
    assert sorted(indices_of(valid)) == sorted(loader.valid_indices.tolist())


def test_tiny_fraction_holds_out_at_least_one_sample():
    loader = BaseDataLoader(IndexDataset(20), batch_size=4, validation_split=0.01)
    assert len(loader.valid_indices) == 1


def test_count():
    loader = BaseDataLoader(IndexDataset(50), batch_size=8, validation_split=7)
    assert len(loader.valid_indices) == 7
    assert len(loader.train_indices) == 43
    assert len(indices_of(loader.split_validation())) == 7
    assert len(indices_of(loader)) == 43


@pytest.mark.parametrize("zero", [0, 0.0])
def test_zero_means_no_validation(zero):
    loader = BaseDataLoader(IndexDataset(30), batch_size=8, validation_split=zero)
    assert loader.split_validation() is None
    assert sorted(indices_of(loader)) == list(range(30))


@pytest.mark.parametrize("bad", [50, 51, 1000, -1, 1.0, 1.5, -0.1])
def test_too_large_or_negative_split_is_refused(bad):
    with pytest.raises(ValueError, match="validation_split"):
        BaseDataLoader(IndexDataset(50), batch_size=8, validation_split=bad)


@pytest.mark.parametrize("bad", ["0.2", None, True])
def test_split_of_the_wrong_type_is_refused(bad):
    with pytest.raises(ValueError, match="validation_split"):
        BaseDataLoader(IndexDataset(50), batch_size=8, validation_split=bad)


def test_explicit_index_list():
    chosen = [0, 5, 17, 49]
    loader = BaseDataLoader(IndexDataset(50), batch_size=8, validation_split=chosen)
    assert loader.valid_indices.tolist() == chosen
    assert sorted(indices_of(loader.split_validation())) == chosen
    assert sorted(indices_of(loader)) == sorted(set(range(50)) - set(chosen))


@pytest.mark.parametrize("bad", [[0, 50], [-1, 3], list(range(50))])
def test_explicit_index_list_out_of_range_or_everything_is_refused(bad):
    with pytest.raises(ValueError, match="validation_split"):
        BaseDataLoader(IndexDataset(50), batch_size=8, validation_split=bad)


# -- which samples ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", [0.2, 9, [3, 4, 5, 40]])
@pytest.mark.parametrize("stratify", [False, True])
def test_train_and_validation_are_disjoint_and_cover_the_dataset(split, stratify):
    dataset = IndexDataset(60)
    loader = BaseDataLoader(dataset, batch_size=7, shuffle=True, validation_split=split, stratify=stratify)
    train, valid = indices_of(loader), indices_of(loader.split_validation())
    assert len(train) == len(set(train))  # no sample twice in an epoch
    assert len(valid) == len(set(valid))
    assert not set(train) & set(valid)
    assert set(train) | set(valid) == set(range(60))
    assert sorted(train) == loader.train_indices.tolist()


def test_stratified_split_keeps_class_proportions(digits):
    loader = DigitsDataLoader(digits, batch_size=256, validation_split=0.2, stratify=True, split_seed=3)
    targets = np.asarray(digits.targets)
    overall = Counter(targets.tolist())
    valid = Counter(targets[loader.valid_indices].tolist())
    n_valid = len(loader.valid_indices)
    for cls, count in overall.items():
        expected = count * n_valid / len(targets)
        assert abs(valid[cls] - expected) <= 1, (cls, valid[cls], expected)
    # The targets the validation loader yields are those of the held-out indices.
    yielded = Counter(int(t) for _, batch in loader.split_validation() for t in batch)
    assert yielded == valid


def test_stratified_split_of_a_skewed_dataset():
    dataset = IndexDataset(200)
    dataset.targets = [0] * 180 + [1] * 20
    loader = BaseDataLoader(dataset, batch_size=16, validation_split=0.25, stratify=True)
    valid = Counter(dataset.targets[i] for i in loader.valid_indices)
    assert valid == {0: 45, 1: 5}


def test_stratify_without_targets_is_refused():
    dataset = IndexDataset(20)
    dataset.targets = None
    with pytest.raises(ValueError, match="stratify"):
        BaseDataLoader(dataset, batch_size=4, validation_split=0.2, stratify=True)


@pytest.mark.parametrize("stratify", [False, True])
def test_split_does_not_touch_the_global_rng(stratify):
    torch.manual_seed(0)
    np.random.seed(0)
    torch_before, numpy_before = torch.get_rng_state(), np.random.get_state()[1].copy()
    loader = BaseDataLoader(IndexDataset(80), batch_size=8, shuffle=True, validation_split=0.25,
                            stratify=stratify, seed=5, split_seed=11)
    loader.split_validation()
    assert torch.equal(torch.get_rng_state(), torch_before)
    assert np.array_equal(np.random.get_state()[1], numpy_before)
    # Nor does iterating over a training epoch (the loader has a generator of its own).
    loader.set_epoch(1)
    indices_of(loader)
    assert torch.equal(torch.get_rng_state(), torch_before)


@pytest.mark.parametrize("stratify", [False, True])
def test_split_depends_on_split_seed_only(stratify):
    def split(seed, split_seed):
        torch.manual_seed(seed * 7 + 1)  # the global RNG must not matter either
        loader = BaseDataLoader(IndexDataset(80), batch_size=8, validation_split=0.25, stratify=stratify,
                                seed=seed, split_seed=split_seed)
        return loader.valid_indices.tolist()

    assert split(seed=1, split_seed=4) == split(seed=1, split_seed=4)
    assert split(seed=1, split_seed=4) == split(seed=2, split_seed=4)  # the run seed leaves the split alone
    assert split(seed=1, split_seed=4) != split(seed=1, split_seed=5)


# -- the validation transform ------------------------------------------------------------------------------
def test_validation_uses_the_evaluation_transform(digits):
    dataset = DigitsDataset(train=True, train_transform=lambda x: x + 100)
    loader = DigitsDataLoader(dataset, batch_size=128, validation_split=0.2)
    valid = loader.split_validation()
    valid_batches = [data for data, _ in valid]
    train_batches = [data for data, _ in loader]
    assert sum(len(b) for b in valid_batches) == len(loader.valid_indices)
    assert sum(len(b) for b in train_batches) == len(loader.train_indices)
    for data in valid_batches:
        assert data.max() <= 1.0  # pixels in [0, 1]: not marked
    for data in train_batches:
        assert data.amin(dim=(1, 2, 3)).min() >= 100  # every training sample marked
    # The validation samples are the dataset's own, untransformed.
    first = int(loader.valid_indices[0])
    assert torch.equal(valid_batches[0][0], digits.images[first])
    # The training loader's dataset still augments.
    assert dataset.augment is True


def test_validation_uses_an_explicit_evaluation_transform():
    dataset = IndexDataset(40, train_transform=lambda x: x + 1000, eval_transform=lambda x: -x)
    loader = BaseDataLoader(dataset, batch_size=8, validation_split=10)
    valid = indices_of(loader.split_validation())
    assert sorted(-v for v in valid) == loader.valid_indices.tolist()
    assert sorted(t - 1000 for t in indices_of(loader)) == loader.train_indices.tolist()


def test_validation_order_is_fixed():
    loader = BaseDataLoader(IndexDataset(60), batch_size=7, shuffle=True, validation_split=20, seed=3)
    valid = loader.split_validation()
    assert indices_of(valid) == loader.valid_indices.tolist()  # in index order
    loader.set_epoch(5)
    assert indices_of(valid) == loader.valid_indices.tolist()


# -- the shuffle order ---------------------------------------------------------------------------------------
def loader_at(epoch: int, seed: int = 1, shuffle: bool = True, **kwargs) -> BaseDataLoader:
    loader = BaseDataLoader(IndexDataset(64), batch_size=5, shuffle=shuffle, validation_split=0.25, seed=seed,
                            **kwargs)
    loader.set_epoch(epoch)
    return loader


def test_shuffle_order_depends_only_on_seed_and_epoch():
    reference = indices_of(loader_at(3))
    torch.manual_seed(999)
    assert indices_of(loader_at(3)) == reference  # not on the global RNG
    # Not on the loader's history: epoch 3 after epochs 1 and 2 is the same epoch 3.
    loader = loader_at(1)
    indices_of(loader)
    loader.set_epoch(2)
    indices_of(loader)
    loader.set_epoch(3)
    assert indices_of(loader) == reference
    assert indices_of(loader) == reference  # iterating again repeats the epoch
    # The epoch and the seed both change it.
    assert indices_of(loader_at(4)) != reference
    assert indices_of(loader_at(3, seed=2)) != reference
    assert sorted(indices_of(loader_at(4))) == sorted(reference)
    # Nor on the number of workers.
    assert indices_of(loader_at(3, num_workers=2)) == reference


def test_shuffle_false_keeps_index_order():
    loader = loader_at(2, shuffle=False)
    assert indices_of(loader) == loader.train_indices.tolist()


def test_shuffle_true_changes_the_order():
    loader = loader_at(1)
    assert indices_of(loader) != loader.train_indices.tolist()


@pytest.mark.parametrize("skip", [0, 1, 4, 9])
def test_skip_batches_yields_the_rest_of_the_same_epoch(skip):
    full = batches_of(loader_at(6))
    assert len(full) == 10  # 48 training samples in batches of 5
    loader = loader_at(6)
    loader.skip_batches(skip)
    assert len(loader) == len(full) - skip
    assert batches_of(loader) == full[skip:]
    # The next epoch starts from its beginning again.
    loader.set_epoch(7)
    assert batches_of(loader) == batches_of(loader_at(7))


def test_skip_batches_with_workers():
    full = batches_of(loader_at(2))
    loader = loader_at(2, num_workers=2)
    loader.skip_batches(3)
    assert batches_of(loader) == full[3:]
