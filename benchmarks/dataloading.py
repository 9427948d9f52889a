"""Image loading throughput: ImageDataset beside torchvision's ImageFolder, on a folder of JPEG files.

    python benchmarks/dataloading.py                     # about a minute
    python benchmarks/dataloading.py --images 64 --rounds 1      # a smoke run

The folder is generated (4 classes of 384x384 photos-like JPEGs). Both datasets produce 112x112
float tensors: ImageFolder with Resize(128) + CenterCrop(112), ImageDataset with ``image_size: 128``
(which decodes JPEGs at reduced scale) + CenterCrop(112). A third row gives ImageDataset with
ImageFolder's exact pipeline, which shows the cost of the template's own code (per-sample seeding,
the training sampler). Each figure is the median over rounds of whole epochs after a warm-up epoch.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from data_loader.data_loaders import ImageDataLoader  # noqa: E402
from dataset.datasets import ImageDataset  # noqa: E402


def make_folder(root: Path, images: int, size: int = 384) -> None:
    """JPEG files with smooth gradients and noise, so they compress like photos, in 4 class folders."""
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, size)
    for i in range(images):
        folder = root / f"class_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.outer(grid, grid[::-1])[..., None] * rng.uniform(80, 255, 3)
        noise = rng.normal(0, 12, (size, size, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)


def throughput(loader, epochs: int, set_epoch=None) -> float:
    """Images per second over ``epochs`` epochs, after one warm-up epoch."""
    count = 0
    for epoch in range(epochs + 1):
        if set_epoch is not None:
            set_epoch(epoch)
        if epoch == 1:
            started = time.perf_counter()
        for data, _ in loader:
            count += len(data) if epoch > 0 else 0
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tail = [v2.CenterCrop(112), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    full = v2.Compose([v2.Resize(128, antialias=True), *tail])

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        make_folder(Path(folder), args.images)
        for workers in (0, 2):
            folder_loader = DataLoader(datasets.ImageFolder(folder, transform=full), batch_size=32, shuffle=True,
                                       num_workers=workers, persistent_workers=workers > 0)
            ours = ImageDataset(folder, image_size=128, train_transform=v2.Compose(tail))
            ours_loader = ImageDataLoader(ours, batch_size=32, validation_split=0, num_workers=workers)
            same = ImageDataset(folder, train_transform=full)
            same_loader = ImageDataLoader(same, batch_size=32, validation_split=0, num_workers=workers)
            rows = {"ImageFolder": [], "ImageDataset": [], "ImageDataset, same pipeline": []}
            for _ in range(args.rounds):  # interleaved
                rows["ImageFolder"].append(throughput(folder_loader, args.epochs))
                rows["ImageDataset"].append(throughput(ours_loader, args.epochs, ours_loader.set_epoch))
                rows["ImageDataset, same pipeline"].append(
                    throughput(same_loader, args.epochs, same_loader.set_epoch))
            results[workers] = {name: statistics.median(values) for name, values in rows.items()}

    print(f"{args.images} JPEG files of 384x384 -> 112x112 tensors, batch 32, median of {args.rounds} rounds")
    print(f"{'dataset':<30}{'workers':>8}{'images/s':>12}{'x ImageFolder':>15}")
    for workers, row in results.items():
        for name, rate in row.items():
            print(f"{name:<30}{workers:>8}{rate:>12.0f}{rate / row['ImageFolder']:>15.2f}")
    for workers, row in results.items():
        ratio = row["ImageDataset"] / row["ImageFolder"]
        print(f"ImageDataset vs ImageFolder, {workers} workers: {ratio:.2f}x  target >= 1.0x: "
              f"{'met' if ratio >= 1.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
