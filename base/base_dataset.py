import copy
from collections.abc import Callable, Sequence

import numpy as np
from torch.utils.data import Dataset

from utils.errors import DataError
from utils.seeding import seeded_rng


class BaseDataset(Dataset):
    """A map-style dataset with a training transform (augmentation) and an evaluation transform.

    Subclasses implement ``__len__`` and ``load(index) -> (sample, target)`` and set:
      - ``targets``: the class index of every sample, or None when labels are unknown;
        it drives stratified splits and k-fold;
      - ``classes`` (optional): the class names, which predictions.csv adds as ``prediction_name``;
      - ``groups`` (optional): one hashable value per sample (a person, a patient, a video): the
        validation split and k-fold then keep every group on one side (utils/data/splits.py).

    A sample is transformed here, not in ``load``: the training transform for training, the
    evaluation transform for validation, test and inference data (see ``evaluation()``). The training
    loader asks for samples as ``(index, seed)`` keys, and the augmentation of that sample draws from
    its own seed, whichever worker loads it.

    Examples:
        >>> class SquaresDataset(BaseDataset):
        ...     def __init__(self, n=100, train_transform=None, eval_transform=None):
        ...         super().__init__(train_transform, eval_transform)
        ...         self.x = torch.rand(n, 1, 8, 8)
        ...         self.targets = (self.x.mean((1, 2, 3)) > 0.5).long().tolist()
        ...     def __len__(self):
        ...         return len(self.x)
        ...     def load(self, index):
        ...         return self.x[index], self.targets[index]
    """

    targets: Sequence[int] | None = None
    classes: Sequence[str] | None = None
    groups: Sequence | None = None

    def __init__(self, train_transform: Callable | None = None, eval_transform: Callable | None = None):
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.augment = True

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int):
        """The raw sample and its target (a class index, or -1 when unknown)."""
        raise NotImplementedError

    def sample_id(self, index: int):
        """What identifies a sample in predictions.csv: its index, or its file path."""
        return index

    def evaluation(self) -> "BaseDataset":
        """A view of the same data with the evaluation transform, for validation and inference."""
        view = copy.copy(self)
        view.augment = False
        return view

    @property
    def num_classes(self) -> int | None:
        if self.classes is not None:
            return len(self.classes)
        return max(self.targets) + 1 if self.targets else None

    def check_labels(self, num_classes: int | None, where: str) -> None:
        """A DataError naming the first sample whose label does not fit a model of ``num_classes``."""
        if num_classes is None or not self.targets:
            return
        if self.classes is not None and len(self.classes) != num_classes:
            raise DataError("dataset", f"has {len(self.classes)} classes ({', '.join(self.classes[:5])}"
                                       f"{', ...' if len(self.classes) > 5 else ''}) but {where} is {num_classes}")
        targets = np.asarray(self.targets)
        outside = np.flatnonzero((targets < 0) | (targets >= num_classes))
        if outside.size:
            first = int(outside[0])
            raise DataError(f"sample {self.sample_id(first)}", f"label {targets[first]} does not fit {where}="
                                                               f"{num_classes} (labels must lie in [0, {num_classes}))")

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample, target = self.load(index)
        transform = self.train_transform if self.augment else self.eval_transform
        if transform is None:
            return sample, target
        if seed is None:
            return transform(sample), target
        with seeded_rng(seed):
            return transform(sample), target
