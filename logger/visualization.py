"""TensorBoard event files in ``<run>/tensorboard/``, written only when ``trainer.tensorboard`` is true."""
import logging
from pathlib import Path

logger = logging.getLogger("trainer")


class TensorboardWriter:
    """A SummaryWriter that is imported only when enabled and does nothing when disabled.

    Every scalar is logged against the global step (optimizer steps), so the per-step loss and the
    per-epoch values share one x axis. On resume, ``purge_step`` hides the events written after the
    checkpoint, so the curves continue without a gap or a repeat.
    """

    def __init__(self, log_dir: str | Path, enabled: bool, purge_step: int | None = None):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # slow to import: only when used

            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """Write several scalars at one step, as one event (one add_scalar per value costs 15 times more)."""
        if self.writer is not None:
            from tensorboard.compat.proto.summary_pb2 import Summary

            summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
            self.writer._get_file_writer().add_summary(summary, step)

    def add_image(self, tag: str, image, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image, step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def add_hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            self.writer.add_hparams(hparams, metrics, run_name="hparams")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def confusion_matrix_image(matrix, class_names=None, cell: int = 28):
    """A confusion matrix as a CHW uint8 image: rows are true classes, columns predictions.

    Each cell is shaded by the fraction of its row (white to blue) and shows its count.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    matrix = np.asarray(matrix)
    n = matrix.shape[0]
    names = [str(name)[:4] for name in (class_names or range(n))]
    margin = cell + 8
    image = Image.new("RGB", (margin + n * cell, margin + n * cell), "white")
    draw = ImageDraw.Draw(image)
    fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    for true in range(n):
        draw.text((2, margin + true * cell + cell // 3), names[true], fill="black")
        draw.text((margin + true * cell + 4, 2), names[true], fill="black")
        for pred in range(n):
            shade = int(255 * (1 - fractions[true, pred]))
            x, y = margin + pred * cell, margin + true * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            if matrix[true, pred]:
                color = "black" if shade > 110 else "white"
                draw.text((x + 3, y + cell // 3), str(int(matrix[true, pred])), fill=color)
    return np.asarray(image).transpose(2, 0, 1).copy()


def record_confusion_matrix(tensorboard: TensorboardWriter, tag: str, matrix, class_names, step: int,
                            max_classes: int) -> None:
    """Draw a confusion matrix in TensorBoard, or, above ``max_classes`` classes (an image would be
    unreadable and huge), log its most confused pairs as text. A failure is a warning, never a lost run."""
    try:
        if len(matrix) <= max_classes:
            tensorboard.add_image(tag, confusion_matrix_image(matrix, class_names), step)
            return
        pairs = top_confused_pairs(matrix, class_names)
        logger.info("%s: %d classes, most confused (true -> predicted: count): %s", tag, len(matrix),
                    ", ".join(f"{true} -> {pred}: {count}" for true, pred, count in pairs))
        rows = "\n".join(f"| {true} | {pred} | {count} |" for true, pred, count in pairs)
        tensorboard.add_text(tag, f"| true | predicted | count |\n|---|---|---|\n{rows}", step)
    except Exception as error:  # a picture must never cost the run
        logger.warning("could not record %s: %s: %s", tag, type(error).__name__, error)


def top_confused_pairs(matrix, class_names=None, count: int = 10) -> list[tuple[str, str, int]]:
    """The ``count`` largest off-diagonal cells of a confusion matrix: (true class, predicted class, count)."""
    import numpy as np

    matrix = np.array(matrix, dtype=np.int64)
    np.fill_diagonal(matrix, 0)
    names = [str(name) for name in class_names] if class_names is not None else [str(i) for i in range(len(matrix))]
    order = np.argsort(matrix, axis=None, kind="stable")[::-1][:count]
    cells = [np.unravel_index(i, matrix.shape) for i in order]
    return [(names[t], names[p], int(matrix[t, p])) for t, p in cells if matrix[t, p] > 0]


def input_grid(batch, count: int = 64):
    """A grid of the first images of a batch, as the model sees them, scaled to [0, 1] for display."""
    from torchvision.utils import make_grid

    images = batch[:count].detach().float().cpu()
    return make_grid(images, nrow=8, normalize=True, scale_each=False, padding=1)


def scatter_image(true, predicted, size: int = 320):
    """Predicted against true values as a CHW uint8 image, with the diagonal y = x in grey."""
    import numpy as np
    from PIL import Image, ImageDraw

    true, predicted = np.asarray(true, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    low, high = min(true.min(), predicted.min()), max(true.max(), predicted.max())
    span = (high - low) or 1.0
    margin = 24
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)

    def position(x, y):
        scale = size - 2 * margin
        return margin + (x - low) / span * scale, size - margin - (y - low) / span * scale

    draw.line([position(low, low), position(high, high)], fill=(180, 180, 180))
    for x, y in zip(true, predicted):
        px, py = position(x, y)
        draw.ellipse([px - 1.5, py - 1.5, px + 1.5, py + 1.5], fill=(30, 90, 200))
    draw.text((margin, size - margin + 6), f"true {low:.3g} .. {high:.3g}", fill="black")
    draw.text((4, 4), "predicted", fill="black")
    return np.asarray(image).transpose(2, 0, 1).copy()
