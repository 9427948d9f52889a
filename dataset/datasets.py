"""Datasets, selected by the config's "dataset" section: ``{"type": "DigitsDataset", "args": {...}}``.

Transforms are given in the dataset's args as lists of torchvision.transforms.v2 steps, e.g.
``"train_transform": [{"type": "RandomAffine", "args": {"degrees": 10}}]``; the config parser builds
them into ``v2.Compose`` pipelines before the dataset sees them.
"""
import numpy as np
import torch

from base.base_dataset import BaseDataset
from dataset.image_dataset import ImageDataset
from dataset.table_dataset import TableDataset

__all__ = ["DigitsDataset", "IrisDataset", "ImageDataset", "SyntheticDataset", "TableDataset"]


def _fixed_split(targets: np.ndarray, test_size: float, split_seed: int, train: bool) -> np.ndarray:
    """The indices of the fixed, stratified train or test part of a small dataset."""
    from sklearn.model_selection import train_test_split

    train_part, test_part = train_test_split(
        np.arange(len(targets)), test_size=test_size, stratify=targets, random_state=split_seed
    )
    return np.sort(train_part if train else test_part)


class DigitsDataset(BaseDataset):
    """scikit-learn's 1,797 handwritten digits: 1x8x8 images in [0, 1], classes 0 to 9.

    Args:
        train: the training part (80%) or the held-out test part (20%) of a fixed stratified split.
        test_size: the fraction held out as the test part.
        split_seed: the seed of that fixed split.
        train_transform / eval_transform: transforms of the 1x8x8 tensors.
    """

    def __init__(self, train: bool = True, test_size: float = 0.2, split_seed: int = 0,
                 train_transform=None, eval_transform=None):
        super().__init__(train_transform, eval_transform)
        from sklearn.datasets import load_digits

        images, targets = load_digits(return_X_y=True)
        part = _fixed_split(targets, test_size, split_seed, train)
        self.images = torch.tensor(images[part] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
        self.targets = targets[part].tolist()
        self.classes = [str(digit) for digit in range(10)]
        self.augment = train  # the test part always uses the evaluation transform

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int):
        return self.images[index], self.targets[index]


class IrisDataset(BaseDataset):
    """scikit-learn's iris flowers: 4 standardized measurements, 3 species (the tabular example).

    Args:
        train: the training part (80%) or the held-out test part (20%) of a fixed stratified split.
        test_size: the fraction held out as the test part.
        split_seed: the seed of that fixed split.
    """

    def __init__(self, train: bool = True, test_size: float = 0.2, split_seed: int = 0,
                 train_transform=None, eval_transform=None):
        super().__init__(train_transform, eval_transform)
        from sklearn.datasets import load_iris

        iris = load_iris()
        train_part = _fixed_split(iris.target, test_size, split_seed, train=True)
        part = train_part if train else _fixed_split(iris.target, test_size, split_seed, train=False)
        # Standardize with the statistics of the training part only.
        mean, std = iris.data[train_part].mean(axis=0), iris.data[train_part].std(axis=0)
        self.features = torch.tensor((iris.data[part] - mean) / std, dtype=torch.float32)
        self.targets = iris.target[part].tolist()
        self.classes = [str(name) for name in iris.target_names]
        self.augment = train

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int):
        return self.features[index], self.targets[index]


class SyntheticDataset(BaseDataset):
    """Random samples with random labels, for benchmarks and smoke tests: nothing to read or download.

    Args:
        num_samples: the dataset's length.
        shape: the shape of a sample, e.g. [3, 224, 224].
        num_classes: labels are drawn from [0, num_classes).
        pool: how many distinct samples are kept in memory; the others repeat them.
        seed: the seed of the samples and labels.
    """

    def __init__(self, num_samples: int = 1024, shape: list[int] = (3, 32, 32), num_classes: int = 10,
                 pool: int = 64, seed: int = 0, train_transform=None, eval_transform=None):
        super().__init__(train_transform, eval_transform)
        generator = torch.Generator().manual_seed(seed)
        self.pool = torch.rand((min(pool, num_samples), *shape), generator=generator)
        self.targets = torch.randint(0, num_classes, (num_samples,), generator=generator).tolist()
        self.classes = [str(c) for c in range(num_classes)]

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int):
        return self.pool[index % len(self.pool)], self.targets[index]
