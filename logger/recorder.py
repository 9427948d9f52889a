"""Everything a run records per epoch: the console line, metrics.csv, TensorBoard and wandb.

Only the main process writes; on the others every method does nothing.
"""
import logging
from pathlib import Path

from logger.metrics_csv import MetricsCsv
from logger.visualization import TensorboardWriter
from logger.wandb_writer import WandbWriter

logger = logging.getLogger(__name__)


def tensorboard_tag(key: str) -> str:
    """Group train and validation curves of a metric together: "val_accuracy" -> "accuracy/val"."""
    if key == "lr":
        return "lr"
    if key.startswith("lr_"):  # the rate of each parameter group
        return f"lr/{key[3:]}"
    if key.startswith("raw_val_"):  # trainer.ema.validate_both: the weights without EMA
        return f"{key[8:]}/val_raw"
    if key == "epoch_time":
        return "time/epoch_seconds"
    return f"{key[4:]}/val" if key.startswith("val_") else f"{key}/train"


class RunRecorder:
    """The outputs of one run directory.

    Args:
        config: the ConfigParser of the run.
        run_dir: the run directory.
        main_process: False on DDP processes other than rank 0 (they write nothing).
        resumed_epoch: the checkpoint's epoch when resuming (later rows and events are dropped).
        resumed_step: the checkpoint's global step when resuming.
        wandb_id / wandb_group / wandb_name: re-attach to a wandb run; group the runs of a k-fold.
    """

    def __init__(self, config, run_dir: Path, main_process: bool, resumed_epoch: int | None = None,
                 resumed_step: int = 0, wandb_id: str | None = None, wandb_group: str | None = None,
                 wandb_name: str | None = None):
        self.epochs = config["trainer"]["epochs"]
        self.csv = MetricsCsv(run_dir / "metrics.csv", resumed_epoch) if main_process else None
        self.tensorboard = TensorboardWriter(run_dir / "tensorboard", main_process and config["trainer"]["tensorboard"],
                                             purge_step=resumed_step + 1 if resumed_epoch is not None else None)
        self.wandb = WandbWriter(config["wandb"], config.config, run_dir, wandb_id, wandb_group, wandb_name,
                                 enabled=main_process)

    def log_epoch(self, log: dict, global_step: int, samples: int | None = None) -> None:
        """Record one epoch's log (floats keyed as in metrics.csv) at this global step."""
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in log.items()
                         if k not in ("epoch", "epoch_time"))
        logger.info("epoch %d/%d  %s  (%.1fs)", log["epoch"], self.epochs, text, log["epoch_time"])
        if self.csv is not None:
            self.csv.write(log)
        scalars = {tensorboard_tag(k): v for k, v in log.items() if k != "epoch"}
        if samples:
            scalars["time/samples_per_second"] = samples / log["epoch_time"]
        self.tensorboard.add_scalars({**scalars, "epoch": log["epoch"]}, global_step)
        self.tensorboard.flush()
        if samples:
            log = log | {"samples_per_second": scalars["time/samples_per_second"]}
        self.wandb.log(log, step=log["epoch"])

    def log_step_loss(self, loss: float, global_step: int) -> None:
        self.tensorboard.add_scalars({"loss/train_step": loss}, global_step)

    def finish(self, hparams: dict, best: dict[str, float]) -> None:
        """Record the hyperparameters with the final best values, and close the writers."""
        self.tensorboard.add_hparams(hparams, {f"hparam/{k}": v for k, v in best.items()})
        self.wandb.set_summary(best)
        self.close()

    def close(self) -> None:
        self.tensorboard.close()
        self.wandb.finish()


def flatten(config: dict, prefix: str = "") -> dict:
    """The config's scalar values keyed by dotted path, for TensorBoard's hparams."""
    flat = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{path}.")
        elif isinstance(value, (bool, int, float, str)):
            flat[path] = value
        elif isinstance(value, list) and all(isinstance(v, (int, float, str)) for v in value):
            flat[path] = str(value)
    return flat
