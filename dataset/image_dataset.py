"""Image files on disk, labelled by a CSV file or by class sub-folders, or unlabelled."""
import logging
import os
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from base.base_dataset import BaseDataset
from dataset.labels import read_labels
from dataset.path_labels import labels_from_paths
from utils.errors import ConfigError, DataError

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
        root: the folder of the images (``data_dir``, the original template's name, works too).
        csv_file: the CSV of paths and labels (a path, or relative to ``root``).
        path_column / label_column: the CSV's column names.
        image_size: resize every image to this size (an int for a square, or [height, width])
            when it is read, before the transforms. JPEG files are decoded at reduced size where
            that is enough, which makes reading large photos much faster.
        train_transform / eval_transform: torchvision.transforms.v2 pipelines (from the config).
        skip_bad_files: check every file when the dataset is built and leave out the missing and
            unreadable ones with a warning, instead of stopping with an error that names the file.
        group_column: the CSV column that names each sample's group (a person, a patient): the
            validation split and k-fold then keep every group on one side.
        group_pattern: the same from a regular expression whose first capture group is the group,
            searched in each file's path relative to its class folder (or the CSV's path value, or
            the path relative to ``root``), e.g. ``"^(\\d+)_"`` for ``000123_mask1.jpg``.
        label_pattern: labels from paths, without a CSV: a regular expression searched in each file's
            path relative to ``root`` (every image under it); its named groups are columns that
            ``label_column`` (one, or a list for MultiHead) and ``group_column`` name
            (dataset/path_labels.py).
        label_map: {column: {value: class name or index}}, e.g. ``{"mask": {"mask": "wear", "normal": "off"}}``.
        label_bins: {column: increasing edges}: ``{"age": [30, 60]}`` gives the classes ``<30``, ``30-59``, ``>=60``.
        skip_unmatched: leave out, with a warning, the files ``label_pattern`` does not match, instead of
            stopping with an error that names the first.
    """

    def __init__(self, root: str | None = None, csv_file: str | None = None, path_column: str = "path",
                 label_column: str | list[str] | None = "label", image_size: int | list[int] | None = None,
                 train_transform=None, eval_transform=None, skip_bad_files: bool = False,
                 group_column: str | None = None, group_pattern: str | None = None, data_dir: str | None = None,
                 label_pattern: str | None = None, label_map: dict | None = None, label_bins: dict | None = None,
                 skip_unmatched: bool = False):
        super().__init__(train_transform, eval_transform)
        if (root is None) == (data_dir is None):
            raise ConfigError("dataset.args.root", "give the image folder as 'root' (or 'data_dir', the original "
                                                   "template's name for it), once")
        self.root = Path(root if root is not None else data_dir)
        if not self.root.is_dir():
            raise DataError(str(self.root), "image folder not found")
        self.image_size = [image_size, image_size] if isinstance(image_size, int) else image_size
        check_path_label_args(csv_file, label_pattern, label_map, label_bins, skip_unmatched)
        if group_column is not None and csv_file is None and label_pattern is None:
            raise ValueError("group_column: needs a csv_file or a label_pattern; for class sub-folders use "
                             "group_pattern")
        if group_column is not None and group_pattern is not None:
            raise ValueError("group_pattern: give group_column or group_pattern, not both")
        groups = None
        self.label_classes = {}  # the class names of each label column read from paths
        if label_pattern is not None:
            self.paths, labels = image_files(self.root), None
            if self.paths:  # none: the error below says so
                keep, labels, self.classes, groups, self.label_classes = labels_from_paths(
                    self._relative_paths(False), label_pattern, label_column, group_column, label_map, label_bins,
                    skip_unmatched)
                self.paths = [self.paths[i] for i in keep]
            where = [str(p) for p in self.paths]
        elif csv_file is not None:
            self.paths, labels, where, groups = self._from_csv(csv_file, path_column, label_column, group_column)
        elif _sub_folders(self.root):
            self.paths, labels, where = self._from_folders()
        else:
            self.paths = image_files(self.root)
            labels, where = None, [str(p) for p in self.paths]
        if not self.paths:
            raise DataError(str(self.root), f"no image files found (looked for {', '.join(IMAGE_EXTENSIONS)})")
        if group_pattern is not None:
            in_class_folders = csv_file is None and label_pattern is None
            groups = groups_from_pattern(group_pattern, self._relative_paths(in_class_folders), where)
        self._check_files(labels, groups, where, skip_bad_files)

    def _relative_paths(self, drop_class_folder: bool) -> list[str]:
        """Each file's path relative to ``root``, without the class folder when labels come from folders."""
        paths = [p.relative_to(self.root) if p.is_relative_to(self.root) else p for p in self.paths]
        if drop_class_folder and self.classes is not None:
            paths = [p.relative_to(p.parts[0]) for p in paths]
        return [p.as_posix() for p in paths]

    def _from_csv(self, csv_file, path_column, label_column, group_column):
        import pandas as pd

        csv_path = Path(csv_file) if Path(csv_file).is_file() else self.root / csv_file
        if not csv_path.is_file():
            raise DataError(str(csv_file), "CSV file not found")
        table = pd.read_csv(csv_path)
        label_columns = label_column if isinstance(label_column, list) else [label_column]
        for column in (path_column, *label_columns, group_column):
            if column is not None and column not in table.columns:
                raise DataError(str(csv_path), f"no column {column!r}; its columns are {list(table.columns)}")
        paths = [self.root / str(p) for p in table[path_column]]
        where = [f"{csv_path}, line {row + 2}" for row in range(len(table))]
        groups = None
        if group_column is not None:
            if table[group_column].isna().any():
                row = int(table[group_column].isna().to_numpy().argmax())
                raise DataError(where[row], f"the group column {group_column!r} is empty")
            groups = table[group_column].tolist()
        if label_column is None:
            return paths, None, where, groups
        labels, self.classes = read_labels(table, label_column, where)
        return paths, labels, where, groups

    def _from_folders(self):
        self.classes = _sub_folders(self.root)
        paths, labels = [], []
        for label, name in enumerate(self.classes):
            files = image_files(self.root / name)
            paths += files
            labels += [label] * len(files)
        return paths, labels, [str(p) for p in paths]

    def _check_files(self, labels, groups, where, skip_bad_files: bool) -> None:
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
        self.groups = [groups[i] for i in keep] if groups is not None else None

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


def check_path_label_args(csv_file, label_pattern, label_map, label_bins, skip_unmatched) -> None:
    """A ValueError naming the key of a path-label argument given without label_pattern, or with a CSV."""
    if label_pattern is not None and csv_file is not None:
        raise ValueError("label_pattern: give csv_file or label_pattern, not both")
    if not isinstance(skip_unmatched, bool):
        raise ValueError(f"skip_unmatched: must be true or false, got {skip_unmatched!r}")
    for key, value in (("label_map", label_map), ("label_bins", label_bins), ("skip_unmatched", skip_unmatched)):
        if value and label_pattern is None:
            raise ValueError(f"{key}: needs a label_pattern (labels read from the files' paths)")
        if key != "skip_unmatched" and value is not None and not isinstance(value, dict):
            raise ValueError(f"{key}: must map a column of label_pattern to its {key[6:]}, got {value!r}")


def is_junk(name: str) -> bool:
    """Hidden and tool folders (.ipynb_checkpoints, .git, __MACOSX, __pycache__): never data."""
    return name.startswith((".", "__"))


def _sub_folders(root: Path) -> list[str]:
    """The names of the sub-folders of ``root`` (symlinked ones too), without the junk ones."""
    folders = sorted(child.name for child in root.iterdir() if child.is_dir())
    junk = [name for name in folders if is_junk(name)]
    if junk:
        logger.warning("%s: ignoring the folders %s (hidden or tool folders, not data)", root, ", ".join(junk))
    return [name for name in folders if not is_junk(name)]


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, sorted, following symlinked folders as ImageFolder does.

    A folder reached twice (a symlink loop, or two links to one folder) is read once; hidden and
    tool folders are skipped with a warning.
    """
    files, seen, skipped = [], set(), []
    for here, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            skipped.append(f"{here} (already read as a link)")
            folders[:] = []
            continue
        seen.add(real)
        skipped += [os.path.join(here, name) for name in folders if is_junk(name)]
        folders[:] = [name for name in folders if not is_junk(name)]
        files += [Path(here, name) for name in names
                  if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith(".")]
    if skipped:
        logger.warning("ignoring %d folder(s) under %s: %s", len(skipped), folder, ", ".join(skipped[:5]))
    return sorted(files)


def _unreadable(path: Path) -> str | None:
    """Why an image cannot be read, or None when it can."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        return f"unreadable image ({error})"
    return None


def groups_from_pattern(pattern: str, relative_paths: list[str], where: list[str]) -> list[str]:
    """The first capture group of ``pattern`` searched in each path; a path it misses is a DataError."""
    import re

    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"group_pattern: {pattern!r} is not a regular expression ({error})") from None
    if regex.groups < 1:
        raise ValueError(f"group_pattern: {pattern!r} has no capture group; put the group in (...)")
    groups = []
    for i, path in enumerate(relative_paths):
        match = regex.search(path)
        if match is None or match.group(1) is None:
            raise DataError(where[i], f"group_pattern '{pattern}' does not match {path!r}")
        groups.append(match.group(1))
    return groups
