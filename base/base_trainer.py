import logging
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from base import dist
from base.checkpoint import (
    FORMAT_VERSION,
    CheckpointWriter,
    find_resume_checkpoint,
    load_checkpoint,
    strip_module_prefix,
)
from base.seeding import get_rng_state, seed_everything, set_rng_state
from logger.recorder import RunRecorder, flatten
from utils.errors import CheckpointError, ConfigError, TrainingInterrupted

logger = logging.getLogger(__name__)


class BaseTrainer:
    """The epoch loop: train, log, monitor, checkpoint, stop early; and resume from a checkpoint.

    Subclasses implement ``_train_epoch(epoch)``, which returns the epoch's log (a dict of floats).
    The model given here is the plain model; ``self.model`` is what the training step calls
    (wrapped for DataParallel or DDP, compiled), ``self.raw_model`` the plain one that is saved.
    """

    def __init__(self, model, criterion, metric_fns: dict, optimizer, config, device: torch.device,
                 lr_scheduler=None, device_ids: list[int] | None = None):
        self.config = config
        options = config["trainer"]
        self.epochs = options["epochs"]
        self.save_period = options["save_period"]
        self.early_stop = options["early_stop"]
        self.device = device
        self.raw_model = model
        self.model = self._wrap_model(model, options, device_ids or [])
        self.criterion, self.metric_fns, self.optimizer = criterion, metric_fns, optimizer
        self.lr_scheduler = lr_scheduler
        self.scheduler_interval = (config["lr_scheduler"] or {}).get("interval", "epoch")
        # Mixed precision: bf16 needs no loss scaling; fp16 does, and its scaler is checkpointed.
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(options["amp"])
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
        self.wandb_id = self.wandb_group = self.wandb_name = None
        self._stop_signal = None
        self.run_dir: Path | None = None
        self.checkpoint_writer = CheckpointWriter()
        self.resume_command = None  # printed on Ctrl-C / SIGTERM; kfold_train.py sets its own

        if config.resume is not None:
            self._resume_checkpoint(config.resume)
        elif config.finetune is not None:
            self._load_weights(config.finetune)

    def _wrap_model(self, model, options: dict, device_ids: list[int]):
        """Move the model to its device and wrap it: channels-last, compile, DDP or DataParallel."""
        model = model.to(self.device)
        if options["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        if dist.is_distributed():
            if options["sync_batchnorm"] and self.device.type != "cuda":
                raise ConfigError("trainer.sync_batchnorm", "needs CUDA GPUs (SyncBatchNorm has no CPU kernel)")
            if options["sync_batchnorm"]:
                model = self.raw_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            if options["compile"]:
                model = torch.compile(model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if options["compile"]:
            model = torch.compile(model)
        if len(device_ids) > 1:
            model = torch.nn.DataParallel(model, device_ids=device_ids)
        return model

    def _train_epoch(self, epoch: int) -> dict:
        """Train one epoch (and validate). Returns the epoch's log, e.g. {"loss": ..., "val_loss": ...}."""
        raise NotImplementedError

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> dict:
        """Train from ``start_epoch`` to ``epochs``; returns the last epoch's log."""
        self.run_dir = self.config.run_dir
        self.resume_command = self.resume_command or f"python {Path(sys.argv[0]).name} -r {self.run_dir}"
        resumed = self.config.resume is not None
        self.recorder = RunRecorder(self.config, self.run_dir, dist.is_main_process(),
                                    resumed_epoch=self.start_epoch - 1 if resumed else None,
                                    resumed_step=self.global_step, wandb_id=self.wandb_id,
                                    wandb_group=self.wandb_group, wandb_name=self.wandb_name)
        self.wandb_id = self.recorder.wandb.run_id
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
                    self.epoch_started = time.perf_counter() - self.resume_state.pop("epoch_time", 0.0)
                    log = {"epoch": epoch, **self._train_epoch(epoch)}
                    log["epoch_time"] = time.perf_counter() - self.epoch_started
                    improved, stop_early = self._update_monitor(log)
                    self._after_epoch(log, improved, final=stop_early or epoch == self.epochs)
                    # Record before the checkpoint: a crash in between redoes the epoch, never skips it.
                    self.recorder.log_epoch(log, self.global_step, self.samples_per_epoch)
                    self._save_checkpoint(epoch, log, best=improved)
                    stop_signal = self._agreed_stop_signal()
                    if stop_signal:
                        raise TrainingInterrupted(stop_signal, self.resume_command)
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

    def _after_epoch(self, log: dict, improved: bool, final: bool) -> None:
        """Record extra outputs of an epoch (the Trainer draws the confusion matrix). Override freely."""

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
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            if self._stop_signal == signal.SIGINT and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C aborts at once
            self._stop_signal = signum
            logger.warning("%s received: saving a checkpoint after this batch (Ctrl-C again to abort)",
                           signal.Signals(signum).name)

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

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
            "epoch_state": dist.gather_objects(self._epoch_state()) if batches_done else {},  # one per process
        }

    def _epoch_state(self) -> dict:
        """What is needed to finish a half-done epoch exactly; subclasses add their running totals."""
        return {"epoch_time": time.perf_counter() - self.epoch_started}

    def _agreed_stop_signal(self) -> int:
        """The stop signal any process received (0 for none), the same on every process."""
        if not dist.is_distributed():
            return self._stop_signal or 0
        flag = torch.tensor([float(self._stop_signal or 0)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

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
            logger.info("saving model_best.pth (%s %.6g)", self.monitor_key, self.monitor_best)
        self.checkpoint_writer.save(state, self.run_dir / "last.pth", links)

    def _resume_checkpoint(self, path: Path) -> None:
        path = Path(path)
        path = path if path.is_file() else find_resume_checkpoint(path)
        logger.info("resuming from %s", path)
        checkpoint = load_checkpoint(path, map_location=self.device)
        self._check_arch(checkpoint, path)
        self._load_state_dict(checkpoint["state_dict"], path)
        if checkpoint["config"]["optimizer"]["type"] != self.config["optimizer"]["type"]:
            logger.warning("the optimizer type changed since the checkpoint: its state is not restored")
        else:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.lr_scheduler is not None and checkpoint["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.start_epoch = checkpoint["epoch"] + 1
        self.resume_batches = checkpoint["batches_done"]
        epoch_states = checkpoint["epoch_state"]
        if isinstance(epoch_states, list):  # stopped mid-epoch: each process continues its own running totals
            epoch_states = epoch_states[dist.get_rank()] if dist.get_rank() < len(epoch_states) else epoch_states[0]
        self.resume_state = dict(epoch_states)
        self.global_step = checkpoint["global_step"]
        if checkpoint["config"]["trainer"]["monitor"] == self.monitor:
            self.monitor_best = checkpoint["monitor_best"]
            self.not_improved_count = checkpoint["not_improved_count"]
            self.best_epoch = checkpoint["best_epoch"]
        self.wandb_id = checkpoint["wandb_id"]
        states = checkpoint["rng_states"]
        self._rng_to_restore = states[dist.get_rank()] if dist.get_rank() < len(states) else states[0]

    def _load_weights(self, path: Path) -> None:
        """--finetune: the model weights only; tensors whose shape changed (a new head) are skipped."""
        checkpoint = load_checkpoint(path, map_location=self.device)
        self._check_arch(checkpoint, path)
        own = self.raw_model.state_dict()
        source = strip_module_prefix(checkpoint["state_dict"], own)
        weights = {k: v for k, v in source.items() if k in own and v.shape == own[k].shape}
        skipped = sorted(set(source) - set(weights))
        if skipped:
            logger.warning("fine-tuning: %d tensors do not fit the model and keep their fresh values: %s",
                           len(skipped), ", ".join(skipped[:10]))
        self.raw_model.load_state_dict(weights, strict=False)
        logger.info("fine-tuning from the weights of %s (epoch %d)", path, checkpoint["epoch"])

    def _check_arch(self, checkpoint: dict, path: Path) -> None:
        if checkpoint["arch"] != self.config["arch"]["type"]:
            raise CheckpointError(str(path), f"holds a {checkpoint['arch']} model, but the config's arch "
                                             f"is {self.config['arch']['type']}")

    def _load_state_dict(self, state_dict: dict, path: Path) -> None:
        try:
            self.raw_model.load_state_dict(strip_module_prefix(state_dict, self.raw_model.state_dict()))
        except RuntimeError as error:
            detail = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
            raise CheckpointError(str(path), f"does not fit the model built from the config: {detail}") from None
