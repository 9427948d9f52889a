"""The real samples an export is verified on: the run's validation data, or files named on the command line."""
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from utils.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def loader_samples(loader, count: int, where: str = "data_loader") -> torch.Tensor:
    """The first ``count`` inputs of ``loader`` (fewer when it has fewer), as one float32 batch."""
    batches, total = [], 0
    for data, _ in loader:
        if not isinstance(data, torch.Tensor):
            raise DataError(where, f"a batch is a {type(data).__name__}: export.py exports models that take one "
                                   "tensor")
        batches.append(data.float())
        total += len(data)
        if total >= count:
            break
    if not batches:
        raise DataError(where, "has no samples to verify the export on")
    return torch.cat(batches)[:count].contiguous()


def file_samples(paths: Sequence[str], image_size: Sequence[int] | None = None,
                 transform: Callable | None = None) -> torch.Tensor:
    """Model inputs read from files: ``.npy`` / ``.pt`` arrays of ready inputs (samples along the first
    dimension; a 1-D array is one sample of features), or image files, read as the image datasets read
    them (RGB, resized to ``image_size`` when given, the evaluation ``transform``, floats in [0, 1]
    unless the transform makes others).

    Examples:
        >>> file_samples(["valid_batch.npy"])                          # shape (N, C, H, W)
        >>> file_samples(["a.jpg", "b.jpg"], image_size=[144, 144], transform=eval_transform)
    """
    samples = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise DataError(str(path), "no such file (--data)")
        suffix = path.suffix.lower()
        if suffix in (".npy", ".pt"):
            samples += list(_array(path))
        elif suffix in IMAGE_SUFFIXES:
            samples.append(_image(path, image_size, transform))
        else:
            raise DataError(str(path), f"--data reads .npy, .pt and image files ({', '.join(IMAGE_SUFFIXES)})")
    shapes = {tuple(sample.shape) for sample in samples}
    if len(shapes) > 1:
        raise DataError("--data", f"the samples have different shapes: {sorted(shapes)}")
    return torch.stack(samples).float().contiguous()


def _array(path: Path) -> torch.Tensor:
    try:
        data = np.load(path) if path.suffix.lower() == ".npy" else torch.load(path, weights_only=True)
    except Exception as error:
        raise DataError(str(path), f"cannot be read: {error}") from None
    data = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
    return data if data.dim() >= 2 else data.unsqueeze(0)


def _image(path: Path, image_size, transform) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise DataError(str(path), f"cannot read image: {error}") from None
    if image_size is not None:
        size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    if transform is not None:
        image = transform(image)
    if not isinstance(image, torch.Tensor):
        image = TF.to_image(image)
    if not image.is_floating_point():
        image = TF.to_dtype(image, torch.float32, scale=True)
    return image
