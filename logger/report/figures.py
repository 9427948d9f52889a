"""The pictures of the analysis page, drawn with matplotlib (Agg: no display needed) into PNG files."""
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_CONFUSION_CLASSES = 30
THUMBNAIL_SIZE = 96


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    figure.savefig(path, dpi=80, bbox_inches="tight")
    _pyplot().close(figure)
    return path


def most_confused_classes(confusion: np.ndarray, limit: int = MAX_CONFUSION_CLASSES) -> np.ndarray:
    """The indices of at most ``limit`` classes with the most mistakes (as true or as predicted class),
    in index order."""
    if len(confusion) <= limit:
        return np.arange(len(confusion))
    errors = confusion.sum(axis=0) + confusion.sum(axis=1) - 2 * np.diag(confusion)
    return np.sort(np.argsort(-errors, kind="stable")[:limit])


def confusion_picture(confusion: np.ndarray, classes: list[str], path: Path,
                      limit: int = MAX_CONFUSION_CLASSES) -> tuple[Path, int]:
    """The row-normalized confusion matrix of the most confused classes (all of them up to ``limit``);
    returns the file and the number of classes drawn."""
    plt = _pyplot()
    shown = most_confused_classes(confusion, limit)
    counts = confusion[np.ix_(shown, shown)].astype(np.float64)
    support = np.maximum(confusion[shown].sum(axis=1, keepdims=True), 1)
    normalized = counts / support
    size = 2.5 + 0.32 * len(shown)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    labels = [classes[i][:18] for i in shown]
    axes.set_xticks(range(len(shown)), labels, rotation=90, fontsize=8)
    axes.set_yticks(range(len(shown)), labels, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(shown) <= 15:
        for (row, column), value in np.ndenumerate(counts):
            if value:
                axes.text(column, row, int(value), ha="center", va="center", fontsize=7,
                          color="white" if normalized[row, column] > 0.5 else "black")
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class")
    return _save(figure, path), len(shown)


def reliability_picture(before: dict, after: dict, temperature: float, path: Path) -> Path:
    """Accuracy against confidence per bin, before and after temperature scaling, and the bin sizes."""
    plt = _pyplot()
    figure, (axes, counts) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=[3, 1], sharex=True)
    centers = (before["edges"][:-1] + before["edges"][1:]) / 2
    width = before["edges"][1] - before["edges"][0]
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for stats, label, marker in ((before, "as predicted", "o"), (after, f"temperature {temperature:.3g}", "s")):
        filled = stats["count"] > 0
        axes.plot(centers[filled], stats["accuracy"][filled], marker=marker, label=label)
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left", fontsize=8)
    counts.bar(centers, before["count"], width=width * 0.9, color="tab:blue", alpha=0.6)
    counts.set_xlabel("confidence (top class probability)")
    counts.set_ylabel("samples")
    counts.set_xlim(0, 1)
    return _save(figure, path)


def curves_picture(curves: dict, path: Path) -> Path | None:
    """Training curves of several runs overlaid: the losses, and each validation metric they share."""
    plt = _pyplot()
    curves = {name: table for name, table in curves.items() if table is not None and len(table)}
    if not curves:
        return None
    shared = set.intersection(*(set(t.columns) for t in curves.values()))
    panels = [["loss", "val_loss"]] + [[c] for c in sorted(shared) if c.startswith("val_") and c != "val_loss"]
    panels = [p for p in panels if any(c in shared for c in p)][:4]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, columns in zip(axes[0], panels):
        for index, (name, table) in enumerate(curves.items()):
            for column in columns:
                if column in table.columns:
                    ax.plot(table["epoch"], table[column], color=f"C{index}",
                            linestyle="--" if column == "loss" else "-", label=f"{name} {column}")
        ax.set_xlabel("epoch")
        ax.set_title(" / ".join(columns), fontsize=9)
        ax.legend(fontsize=7)
    return _save(figure, path)


def residuals_picture(target: np.ndarray, residual: np.ndarray, path: Path, max_points: int = 20000) -> Path:
    """Residuals (prediction - target) against the target; at most ``max_points`` of them, evenly spread."""
    plt = _pyplot()
    step = max(1, len(target) // max_points)
    figure, axes = plt.subplots(figsize=(5.5, 3.8))
    axes.scatter(target[::step], residual[::step], s=4, alpha=0.5)
    axes.axhline(0, color="grey", linewidth=1)
    axes.set_xlabel("target")
    axes.set_ylabel("prediction - target")
    return _save(figure, path)


def thumbnail(sample_id: str, folder: Path, index: int) -> str | None:
    """A small PNG copy of the image file ``sample_id`` in ``folder``; its name, or None when the id
    is not an image file that can be read."""
    from PIL import Image, UnidentifiedImageError

    source = Path(str(sample_id))
    if source.suffix.lower() not in IMAGE_SUFFIXES or not source.is_file():
        return None
    name = f"{index:04d}.png"
    try:
        with Image.open(source) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            image.save(folder / name)
    except (OSError, UnidentifiedImageError):
        return None
    return name
