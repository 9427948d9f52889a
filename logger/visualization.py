"""TensorBoard event files in ``<run>/tensorboard/``, written only when ``trainer.tensorboard`` is true."""
from pathlib import Path


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
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def add_image(self, tag: str, image, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image, step)

    def add_hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            self.writer.add_hparams(hparams, metrics, run_name="hparams")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
