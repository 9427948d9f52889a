"""Image files on disk, labelled by a CSV file or by class sub-folders, or unlabelled."""
import logging
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from base.base_dataset import BaseDataset
from dataset.labels import read_labels
from utils.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageDataset(BaseDataset):
    """Image files under ``root``, as RGB float tensors in [0, 1].

    Labels come from, in this order:
      1. ``csv_file``: a CSV with a path column (relative to ``root``) and a label column. Labels are
         class indices (integers) or class names (sorted to give the indices); numbers for
         regression; space-separated tags for multi-label. ``label_column`` may be a list of columns
         (one per head, per 0/1 label or per regression output). With ``label_column: null`` the
         files are listed without labels.
      2. class sub-folders, as torchvision's ImageFolder: ``root/<class name>/**/<image>``.
      3. neither: every image under ``root`` is an unlabelled sample (target -1); its path is its id
         in predictions.csv. This is the layout of a competition's test folder.

    Args:
        root: the folder of the images.
        csv_file: the CSV of paths and labels (a path, or relative to ``root``).
        path_column / label_column: the CSV's column names.
        image_size: resize every image to this size (an int for a square, or [height, width])
            when it is read, before the transforms. JPEG files are decoded at reduced size where
            that is enough, which makes reading large photos much faster.
        train_transform / eval_transform: torchvision.transforms.v2 pipelines (from the config).
        skip_bad_files: check every file when the dataset is built and leave out the missing and
            unreadable ones with a warning, instead of stopping with an error that names the file.
    """

    def __init__(self, root: str, csv_file: str | None = None, path_column: str = "path",
                 label_column: str | list[str] | None = "label", image_size: int | list[int] | None = None,
                 train_transform=None, eval_transform=None, skip_bad_files: bool = False):
        super().__init__(train_transform, eval_transform)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(str(self.root), "image folder not found")
        self.image_size = [image_size, image_size] if isinstance(image_size, int) else image_size
        if csv_file is not None:
            self.paths, labels, where = self._from_csv(csv_file, path_column, label_column)
        elif any(child.is_dir() for child in self.root.iterdir()):
            self.paths, labels, where = self._from_folders()
        else:
            self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            labels, where = None, [str(p) for p in self.paths]
        if not self.paths:
            raise DataError(str(self.root), f"no image files found (looked for {', '.join(IMAGE_EXTENSIONS)})")
        self._check_files(labels, where, skip_bad_files)

    def _from_csv(self, csv_file, path_column, label_column):
        import pandas as pd

        csv_path = Path(csv_file) if Path(csv_file).is_file() else self.root / csv_file
        if not csv_path.is_file():
            raise DataError(str(csv_file), "CSV file not found")
        table = pd.read_csv(csv_path)
        label_columns = label_column if isinstance(label_column, list) else [label_column]
        for column in (path_column, *label_columns):
            if column is not None and column not in table.columns:
                raise DataError(str(csv_path), f"no column {column!r}; its columns are {list(table.columns)}")
        paths = [self.root / str(p) for p in table[path_column]]
        where = [f"{csv_path}, line {row + 2}" for row in range(len(table))]
        if label_column is None:
            return paths, None, where
        labels, self.classes = read_labels(table, label_column, where)
        return paths, labels, where

    def _from_folders(self):
        self.classes = sorted(child.name for child in self.root.iterdir() if child.is_dir())
        paths, labels = [], []
        for label, name in enumerate(self.classes):
            files = sorted(p for p in (self.root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            paths += files
            labels += [label] * len(files)
        return paths, labels, [str(p) for p in paths]

    def _check_files(self, labels, where, skip_bad_files: bool) -> None:
        keep = []
        for i, path in enumerate(self.paths):
            problem = None if path.is_file() else "image file not found"
            if problem is None and skip_bad_files:
                problem = _unreadable(path)
            if problem is None:
                keep.append(i)
            elif not skip_bad_files:
                raise DataError(where[i], f"{problem}: {path}")
        if len(keep) < len(self.paths):
            logger.warning("skipped %d of %d image files that are missing or unreadable",
                           len(self.paths) - len(keep), len(self.paths))
            if not keep:
                raise DataError(str(self.root), "every image file is missing or unreadable")
        self.paths = [self.paths[i] for i in keep]
        self.targets = [labels[i] for i in keep] if labels is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def sample_id(self, index: int) -> str:
        return str(self.paths[index])

    def load(self, index: int):
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                if self.image_size is not None:
                    # Decode JPEGs at the smallest scale that still covers the target size.
                    image.draft("RGB", (self.image_size[1], self.image_size[0]))
                image = image.convert("RGB")
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            raise DataError(str(path), f"cannot read image: {error}") from None
        if self.image_size is not None:
            image = image.resize((self.image_size[1], self.image_size[0]), Image.BILINEAR)
        return image, self.targets[index] if self.targets is not None else -1

    def __getitem__(self, key):
        from torchvision.transforms.v2 import functional as TF  # imported here: slow, and only needed here

        image, target = super().__getitem__(key)
        # Pipelines may stop at a PIL image or a uint8 tensor; the model always gets floats in [0, 1].
        if not isinstance(image, torch.Tensor):
            image = TF.to_image(image)
        if not image.is_floating_point():
            image = TF.to_dtype(image, torch.float32, scale=True)
        return image, target


def _unreadable(path: Path) -> str | None:
    """Why an image cannot be read, or None when it can."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        return f"unreadable image ({error})"
    return None
