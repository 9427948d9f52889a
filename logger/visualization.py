"""TensorBoard event files in ``<run>/tensorboard/``, written only when ``trainer.tensorboard`` is true."""
import itertools
import logging
import os
import socket
import time
from pathlib import Path

logger = logging.getLogger(__name__)

_file_numbers = itertools.count()


class EventFile:
    """One TensorBoard event file, written by the calling thread (the format SummaryWriter writes).

    SummaryWriter hands every event to a writer thread; in a training loop that hand-over costs
    more CPU than the event itself (about 1 ms an event, timed inside the training loop).
    Here an event costs the time to encode it; the file is flushed at least every ``flush_secs``.
    """

    def __init__(self, log_dir: str | Path, flush_secs: float = 10.0):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter

        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads a folder's files in name order: a new file's time stamp is past every earlier
        # file's, so a resumed run's events (and its purge_step) come after those of the run it continues.
        stamps = [int(part) for part in (p.name.split(".")[3] for p in log_dir.glob("events.out.tfevents.*"))
                  if part.isdigit()]
        stamp = max([int(time.time()), *(s + 1 for s in stamps)])
        stem = f"events.out.tfevents.{stamp:010d}.{socket.gethostname()}.{os.getpid()}"
        while True:  # never reuse a file of this process (several writers may share a second)
            try:
                self._file = open(log_dir / f"{stem}.{next(_file_numbers)}", "xb")
                break
            except FileExistsError:
                continue
        self._records = RecordWriter(self._file)
        self._flush_secs, self._flushed = flush_secs, time.monotonic()
        self.add(Event(file_version="brain.Event:2"))
        self.flush()

    def add(self, event, step: int | None = None) -> None:
        """Write an ``Event`` (stamped with the time and, if given, the step)."""
        event.wall_time = time.time()
        if step is not None:
            event.step = int(step)
        self._records.write(event.SerializeToString())
        if time.monotonic() - self._flushed > self._flush_secs:
            self.flush()

    def add_summary(self, summary, step: int | None = None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self.add(Event(summary=summary), step)

    def flush(self) -> None:
        self._file.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def scalars_summary(values: dict[str, float]):
    """One ``Summary`` of several scalars (one event for all of them: cheaper than one each)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    return Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])


class TensorboardWriter:
    """TensorBoard output that is imported only when enabled and does nothing when disabled.

    Every scalar is logged against the global step (optimizer steps), so the per-step loss and the
    per-epoch values share one x axis. On resume, ``purge_step`` hides the events written after the
    checkpoint, so the curves continue without a gap or a repeat. Summaries are made by
    ``torch.utils.tensorboard.summary``; events are written as SummaryWriter writes them, without its thread.
    """

    def __init__(self, log_dir: str | Path, enabled: bool, purge_step: int | None = None):
        self.log_dir = Path(log_dir)
        self.file = EventFile(self.log_dir) if enabled else None
        if self.file is not None and purge_step is not None:
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog

            # As SummaryWriter(purge_step=...): TensorBoard drops earlier files' events from this step on.
            self.file.add(Event(file_version="brain.Event:2"), purge_step)
            self.file.add(Event(session_log=SessionLog(status=SessionLog.START)), purge_step)

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """Write several scalars at one step, as one event."""
        if self.file is not None:
            self.file.add_summary(scalars_summary(values), step)

    def add_image(self, tag: str, image, step: int) -> None:
        """A CHW image (uint8, or float in [0, 1])."""
        if self.file is not None:
            from torch.utils.tensorboard.summary import image as image_summary

            self.file.add_summary(image_summary(tag, image, dataformats="CHW"), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        if self.file is not None:
            from torch.utils.tensorboard.summary import text as text_summary

            self.file.add_summary(text_summary(tag, text), step)

    def add_hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        """The run's hyperparameters and final metrics, in ``hparams/`` (TensorBoard's HPARAMS tab)."""
        if self.file is not None:
            from torch.utils.tensorboard.summary import hparams as hparams_summaries

            file = EventFile(self.log_dir / "hparams")
            for summary in (*hparams_summaries(hparams, metrics), scalars_summary(metrics)):
                file.add_summary(summary)
            file.close()

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


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
