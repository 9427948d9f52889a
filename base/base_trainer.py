import logging
import math
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from logger.recorder import RunRecorder, flatten
from utils import distributed as dist
from utils.checkpoint.files import FORMAT_VERSION, CheckpointWriter, load_model_weights, strip_module_prefix
from utils.checkpoint.pretrained import load_matching
from utils.checkpoint.resume import apply_resume_changes
from utils.cli import on_stop_signals
from utils.errors import CheckpointError, ConfigError, TrainingInterrupted
from utils.recipe.ema import ModelEma
from utils.recipe.freezing import BackboneFreezer, rewrap_ddp
from utils.recipe.param_groups import group_lrs
from utils.seeding import get_rng_state, seed_everything, set_rng_state
from utils.util import amp_dtype

logger = logging.getLogger(__name__)


class BaseTrainer:
    """The epoch loop: train, log, monitor, checkpoint, stop early; and resume from a checkpoint.

    Subclasses implement ``_train_epoch(epoch)``, which returns the epoch's log (a dict of floats).
    ``train()`` does the rest around it: it steps epoch-interval schedulers (ReduceLROnPlateau with
    the monitored value), logs, monitors, checkpoints and stops early. The model given here is the
    plain model; ``self.model`` is what the training step calls (wrapped for DataParallel or DDP,
    compiled), ``self.raw_model`` the plain one that is saved, ``self.eval_model`` the one validation calls.

    A run is continued by one explicit call after construction: ``trainer.resume(checkpoint, path)``
    (train.py's ``build_trainer`` makes it), or started from another run's weights with
    ``trainer.load_weights(checkpoint, path)`` (``--finetune``).
    """

    def __init__(self, model, criterion, metric_fns: dict, optimizer, config, device: torch.device,
                 lr_scheduler=None, device_ids: list[int] | None = None):
        self.config = config
        options = config["trainer"]
        self.epochs = options["epochs"]
        self.save_period = options["save_period"]
        self.early_stop = options["early_stop"]
        self.device = device
        self.raw_model, self.model = dist.wrap_model(model, options, device, device_ids or [])
        # Fine-tuning: the backbone frozen for the first epochs, and an EMA of the weights (off by default).
        self.freezer = BackboneFreezer(self.raw_model, options["freeze_backbone_epochs"])
        self.ema = ModelEma(self.raw_model, **options["ema"]) if options["ema"] is not None else None
        self._raw_validation = False  # True while validating the raw weights beside the EMA (ema.validate_both)
        self.criterion, self.metric_fns, self.optimizer = criterion, metric_fns, optimizer
        self.lr_scheduler = lr_scheduler
        self.scheduler_interval = (config["lr_scheduler"] or {}).get("interval", "epoch")
        # Mixed precision: bf16 needs no loss scaling; fp16 does, and its scaler is checkpointed.
        self.amp_dtype = amp_dtype(options["amp"])
        self.scaler = torch.amp.GradScaler(device.type, enabled=options["amp"] == "fp16")

        self.monitor = options["monitor"]
        self.monitor_mode, self.monitor_key = ("off", None) if self.monitor == "off" else self.monitor.split()
        self.monitor_best = math.inf if self.monitor_mode == "min" else -math.inf
        self.not_improved_count = 0
        self.best_epoch = 0
        self.start_epoch = 1
        self.global_step = 0
        self.resume_batches = 0  # batches of start_epoch already done (resuming mid-epoch)
        self.resume_state: dict = {}
        self._rng_to_restore = None
        self.samples_per_epoch = None  # for the samples/second figure; the Trainer sets it
        self.classes = None  # the class names of the training data, kept in checkpoints for inference
        self.loss_args = {}  # loss arguments resolved from the data ("balanced" weights), kept in checkpoints
        self.wandb_id = self.wandb_group = self.wandb_name = None
        self._stop_signal = None
        self.run_dir: Path | None = None
        self.checkpoint_writer = CheckpointWriter()
        self.resume_command = None  # printed on Ctrl-C / SIGTERM; kfold_train.py sets its own
        self.resumed = False
        # Each is called as callback(epoch, log) once the epoch's checkpoint is saved (tune.py prunes there).
        self.epoch_callbacks: list = []

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model validation calls: the EMA of the weights when ``trainer.ema`` is on (unless the raw
        weights are being validated), else the plain model (each DDP process validates its own share).
        """
        if self.ema is not None and not self._raw_validation:
            return self.ema.module
        return self.model.module if isinstance(self.model, torch.nn.parallel.DistributedDataParallel) else self.model

    def _train_epoch(self, epoch: int) -> dict:
        """Train one epoch (and validate). Returns the epoch's log, e.g. {"loss": ..., "val_loss": ...}.

        Epoch-interval schedulers are stepped by ``train()`` afterwards; "lr" is added when missing.
        """
        raise NotImplementedError

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> dict:
        """Train from ``start_epoch`` to ``epochs``; returns the last epoch's log."""
        self.run_dir = self.config.run_dir
        self.resume_command = self.resume_command or f"python {Path(sys.argv[0]).name} -r {self.run_dir}"
        self.recorder = RunRecorder(self.config, self.run_dir, dist.is_main_process(),
                                    resumed_epoch=self.start_epoch - 1 if self.resumed else None,
                                    resumed_step=self.global_step, wandb_id=self.wandb_id,
                                    wandb_group=self.wandb_group, wandb_name=self.wandb_name)
        self.wandb_id = self.recorder.wandb.run_id
        if not self.resumed:
            self._on_run_start()
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
        elif dist.get_rank() > 0:
            seed_everything(self.config["seed"] + dist.get_rank())  # different dropout masks per process
        log = {}
        if self.start_epoch > self.epochs:
            logger.warning("the run already finished epoch %d of %d: add trainer.epochs=N to train longer",
                           self.start_epoch - 1, self.epochs)
        try:
            with self._stop_on_signals():
                for epoch in range(self.start_epoch, self.epochs + 1):
                    if self.freezer.set_epoch(epoch):
                        self.model = rewrap_ddp(self.model)
                    self.epoch_started = time.perf_counter() - self.resume_state.pop("epoch_time", 0.0)
                    lrs = group_lrs(self.optimizer)  # the rates this epoch starts with: "lr", "lr_<group>"
                    log = {"epoch": epoch, **self._train_epoch(epoch)}
                    log |= {key: value for key, value in lrs.items() if key not in log}
                    log["epoch_time"] = time.perf_counter() - self.epoch_started
                    self._step_epoch_scheduler(log)
                    improved, stop_early = self._update_monitor(log)
                    # Record before the checkpoint: a crash in between redoes the epoch, never skips it.
                    self.recorder.log_epoch(log, self.global_step, self.samples_per_epoch)
                    self._save_checkpoint(epoch, log, best=improved)
                    # Pictures last: whatever they cost, the epoch's row and checkpoint are already written.
                    self._after_epoch(log, improved, final=stop_early or epoch == self.epochs)
                    stop_signal = self._agreed_stop_signal()
                    if stop_signal:
                        raise TrainingInterrupted(stop_signal, self.resume_command)
                    for callback in self.epoch_callbacks:
                        callback(epoch, log)
                    if stop_early:
                        logger.info("no improvement of %s in %d epochs: stopping early", self.monitor_key,
                                    self.early_stop)
                        break
            best = {f"best_{self.monitor_key}": self.monitor_best} if self.monitor_key else {}
            self.recorder.finish(flatten(self.config.config), best | {"best_epoch": self.best_epoch,
                                 **{f"last_{k}": v for k, v in log.items() if isinstance(v, float)}})
        finally:
            self.checkpoint_writer.wait()
            self.recorder.close()
        return log

    def _step_epoch_scheduler(self, log: dict) -> None:
        """Step an epoch-interval scheduler after the epoch (ReduceLROnPlateau with the monitored value)."""
        if self.lr_scheduler is None or self.scheduler_interval != "epoch":
            return
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.lr_scheduler.step(log[self.monitor_key or "loss"])
        else:
            self.lr_scheduler.step()

    def _on_run_start(self) -> None:
        """Record what describes a new run before its first epoch (the Trainer: the class balance)."""

    def _after_epoch(self, log: dict, improved: bool, final: bool) -> None:
        """Record extra outputs of an epoch (the Trainer draws the confusion matrix). Override freely.

        It runs after the epoch's metrics row and checkpoint are written (the checkpoint maybe still
        in the background: ``self.checkpoint_writer.wait()`` makes sure), so it cannot lose the epoch.
        """

    def _update_monitor(self, log: dict) -> tuple[bool, bool]:
        """(improved, stop early): rank 0 decides, so every process stops at the same epoch."""
        if self.monitor_mode == "off":
            return False, False
        if self.monitor_key not in log:
            raise ConfigError("trainer.monitor", f"{self.monitor_key!r} is not in the epoch's log "
                                                 f"({', '.join(log)}); is there a validation split?")
        value = log[self.monitor_key]
        improved = value < self.monitor_best if self.monitor_mode == "min" else value > self.monitor_best
        improved = bool(dist.broadcast_object(improved))
        if improved:
            self.monitor_best, self.not_improved_count, self.best_epoch = value, 0, log["epoch"]
        else:
            self.not_improved_count += 1
        return improved, 0 < self.early_stop <= self.not_improved_count

    @contextmanager
    def _stop_on_signals(self):
        """On Ctrl-C or SIGTERM, finish the batch, save a checkpoint and exit with 130 or 143."""

        def request_stop(signum):
            if self._stop_signal == signal.SIGINT and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C aborts at once
            self._stop_signal = signum
            logger.warning("%s received: saving a checkpoint after this batch (Ctrl-C again to abort)",
                           signal.Signals(signum).name)

        with on_stop_signals(request_stop):
            yield

    # -- checkpoints ---------------------------------------------------------------------------
    def _checkpoint_state(self, epoch: int, log: dict, batches_done: int = 0) -> dict:
        """Everything needed to continue exactly: SPEC section 5."""
        return {
            "format_version": FORMAT_VERSION,
            "arch": type(self.raw_model).__name__,
            "epoch": epoch,
            "batches_done": batches_done,
            "global_step": self.global_step,
            "state_dict": self.raw_model.state_dict(),  # the plain model: no wrapper prefixes
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "monitor_best": self.monitor_best,
            "not_improved_count": self.not_improved_count,
            "best_epoch": self.best_epoch,
            "rng_states": dist.gather_objects(get_rng_state()),  # one per process
            "config": self.config.config,
            "wandb_id": self.wandb_id,
            "metrics": log,
            "classes": [str(name) for name in self.classes] if self.classes is not None else None,
            "loss_args": self.loss_args,
            "epoch_state": dist.gather_objects(self._epoch_state()) if batches_done else {},  # one per process
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def _epoch_state(self) -> dict:
        """What is needed to finish a half-done epoch exactly; subclasses add their running totals."""
        return {"epoch_time": time.perf_counter() - self.epoch_started}

    def _agreed_stop_signal(self) -> int:
        """The stop signal any process received (0 for none), the same on every process."""
        return int(dist.all_max([float(self._stop_signal or 0)], self.device)[0])

    def _save_checkpoint(self, epoch: int, log: dict, best: bool = False, batches_done: int = 0) -> None:
        """Write last.pth; link checkpoint-epoch{N}.pth every save_period epochs and model_best.pth."""
        state = self._checkpoint_state(epoch, log, batches_done)
        if not dist.is_main_process():
            return
        links = []  # hard links to last.pth: no extra disk space, and atomic
        if batches_done == 0 and self.save_period and epoch % self.save_period == 0:
            links.append(self.run_dir / f"checkpoint-epoch{epoch}.pth")
        if best:
            links.append(self.run_dir / "model_best.pth")
        wait = best or self.config.unsaved_changes  # wait for the disk: a failed write stops here
        self.checkpoint_writer.save(state, self.run_dir / "last.pth", links, wait=wait)
        if wait:
            self.config.save_config()  # resume changes reach config.json once a checkpoint holds them
        if best:
            logger.info("saved model_best.pth (%s %.6g)", self.monitor_key, self.monitor_best)

    # -- resuming: one call after construction -------------------------------------------------
    def resume(self, checkpoint: dict, path: Path) -> None:
        """Continue the run a checkpoint (read and verified by ``load_checkpoint``) was saved from.

        Restores the model, optimizer, scheduler, AMP scaler, epoch, step, position in the epoch,
        monitor and early-stop state, and the RNG states (set when training starts).
        """
        logger.info("resuming from %s", path)
        self._check_arch(checkpoint, path)
        load_model_weights(self.raw_model, checkpoint["state_dict"], path)
        if checkpoint["config"]["optimizer"]["type"] != self.config["optimizer"]["type"]:
            logger.warning("the optimizer type changed since the checkpoint: its state is not restored")
        else:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.lr_scheduler is not None and checkpoint["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None and checkpoint.get("ema"):
            self.ema.load_state_dict(checkpoint["ema"])
        elif self.ema is not None:
            logger.warning("the checkpoint has no EMA weights: the EMA starts from the current weights")
        apply_resume_changes(checkpoint["config"], self.config, self.optimizer, self.lr_scheduler,
                             epoch=checkpoint["epoch"] + 1)
        self.start_epoch = checkpoint["epoch"] + 1
        self.resume_batches = checkpoint["batches_done"]
        epoch_state = checkpoint["epoch_state"]  # stopped mid-epoch: each process continues its own totals
        self.resume_state = dict(dist.own_entry(epoch_state) if isinstance(epoch_state, list) else epoch_state)
        self.global_step = checkpoint["global_step"]
        if checkpoint["config"]["trainer"]["monitor"] == self.monitor:
            self.monitor_best = checkpoint["monitor_best"]
            self.not_improved_count = checkpoint["not_improved_count"]
            self.best_epoch = checkpoint["best_epoch"]
        self.wandb_id = checkpoint["wandb_id"]
        self.resumed = True
        self._rng_to_restore = dist.own_entry(checkpoint["rng_states"])

    def load_weights(self, checkpoint: dict, path: Path) -> None:
        """--finetune: the model weights only; tensors whose shape changed (a new head) are skipped."""
        self._check_arch(checkpoint, path)
        state_dict = strip_module_prefix(checkpoint["state_dict"], self.raw_model.state_dict())
        load_matching(self.raw_model, state_dict, str(path))  # a new head keeps its fresh values
        logger.info("fine-tuning from the weights of %s (epoch %d)", path, checkpoint["epoch"])

    def _check_arch(self, checkpoint: dict, path: Path) -> None:
        if checkpoint["arch"] != self.config["arch"]["type"]:
            raise CheckpointError(str(path), f"holds a {checkpoint['arch']} model, but the config's arch "
                                             f"is {self.config['arch']['type']}")
