"""Weights & Biases: the config, the per-epoch metrics and the best value, written to ``<run>/wandb/``."""
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


class WandbWriter:
    """A wandb run that is imported only when ``wandb.enabled`` is true and does nothing otherwise.

    The default mode "offline" needs neither the network nor a login; ``wandb sync <run>/wandb/offline-run-*``
    uploads it later. ``WANDB_MODE`` in the environment wins over the config's mode. Passing the id
    stored in a checkpoint re-attaches to the same run, so the curves continue after a resume.
    """

    def __init__(self, options: dict, config: dict, run_dir: str | Path, run_id: str | None = None,
                 group: str | None = None, name: str | None = None, enabled: bool = True):
        self.run = None
        if not (enabled and options["enabled"]):
            return
        import wandb  # slow to import: only when used

        self.run = wandb.init(
            project=options["project"] or config["name"],
            entity=options["entity"],
            name=options["name"] or name or Path(run_dir).name,
            tags=options["tags"],
            group=group,
            mode=os.environ.get("WANDB_MODE", options["mode"]),
            dir=str(run_dir),
            config=config,
            id=run_id,
            resume="allow" if run_id else None,
            reinit="finish_previous",
            settings=wandb.Settings(silent=True),
        )
        if self.run.settings.mode == "offline":
            logger.info("wandb: offline run in %s; upload it with: wandb sync %s", self.run.dir,
                        Path(self.run.dir).parent)

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, values: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def set_summary(self, values: dict[str, float]) -> None:
        if self.run is not None:
            for key, value in values.items():
                self.run.summary[key] = value

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
