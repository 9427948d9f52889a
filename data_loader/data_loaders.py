"""Data loaders, selected by the config's "data_loader" section.

The config parser builds the "dataset" section first and passes the dataset in, so any loader
serves any dataset; the loaders differ in their defaults. Write your own by subclassing
BaseDataLoader, e.g. to pass a custom ``collate_fn``.
"""
from base.base_data_loader import BaseDataLoader


class DigitsDataLoader(BaseDataLoader):
    """Loader for small image datasets held in memory: stratified validation split, no workers."""

    def __init__(self, dataset, batch_size: int = 64, shuffle: bool = True, validation_split=0.1,
                 num_workers: int = 0, stratify: bool = True, **kwargs):
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers, stratify, **kwargs)


class IrisDataLoader(BaseDataLoader):
    """Loader for tabular data (the name the original config used): small batches, stratified split."""

    def __init__(self, dataset, batch_size: int = 16, shuffle: bool = True, validation_split=0.2,
                 num_workers: int = 0, stratify: bool = True, **kwargs):
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers, stratify, **kwargs)


class ImageDataLoader(BaseDataLoader):
    """Loader for image files read from disk: worker processes decode in parallel with training."""

    def __init__(self, dataset, batch_size: int = 32, shuffle: bool = True, validation_split=0.1,
                 num_workers: int = 2, stratify: bool = False, **kwargs):
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers, stratify, **kwargs)


class TableDataLoader(BaseDataLoader):
    """Loader for TableDataset and any task: a random (unstratified) validation split, no workers."""

    def __init__(self, dataset, batch_size: int = 32, shuffle: bool = True, validation_split=0.2,
                 num_workers: int = 0, stratify: bool = False, **kwargs):
        super().__init__(dataset, batch_size, shuffle, validation_split, num_workers, stratify, **kwargs)
