import contextlib
import logging
import math
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from base.base_task import BaseTask
from base.metric_tracker import MetricTracker
from logger.class_balance import report_class_balance
from logger.figures import ValidationFigures
from logger.recorder import RunRecorder, flatten
from logger.visualization import input_grid
from utils import distributed as dist
from utils.checkpoint import training_state
from utils.checkpoint.files import CheckpointWriter
from utils.checkpoint.monitor import update_monitor
from utils.checkpoint.top_k import TopK
from utils.cli import on_stop_signals
from utils.errors import CheckpointError, ConfigError, TrainingInterrupted
from utils.recipe.averaged_eval import finish_averages
from utils.recipe.ema import ModelEma
from utils.recipe.freezing import BackboneFreezer, rewrap_ddp
from utils.recipe.mixup import build_mixer
from utils.recipe.param_groups import group_lrs
from utils.recipe.schedulers import step_epoch_scheduler
from utils.recipe.swa import Swa
from utils.util import amp_dtype, autocast, is_image_batch, to_device

logger = logging.getLogger(__name__)


class BaseTrainer:
    """The training loop: epochs, batches, validation, metrics, checkpoints, resume and early stopping.

    A subclass (trainer/trainer.py) changes what one batch does with ``_train_step`` and ``_valid_step``;
    the loop around them keeps AMP, accumulation with DDP ``no_sync``, clipping, the optimizer and
    scheduler steps, EMA, MixUp, exact metrics, the non-finite loss check, stop signals and exact resume.
    ``self.model`` is what the training step calls (wrapped for DDP, compiled), ``self.raw_model`` the
    plain model that is saved, ``self.eval_model`` the one validation calls.
    """

    def __init__(self, model, criterion, metric_fns: dict, optimizer, config, device: torch.device,
                 data_loader, valid_data_loader=None, lr_scheduler=None, device_ids: list[int] | None = None,
                 task: BaseTask | None = None):
        self.config, options = config, config["trainer"]
        self.epochs, self.save_period, self.early_stop = (options[k] for k in ("epochs", "save_period", "early_stop"))
        self.device, self.data_loader, self.valid_data_loader = device, data_loader, valid_data_loader
        self.task = task if task is not None else BaseTask()  # single-label classification by default
        self.raw_model, self.model = dist.wrap_model(model, options, device, device_ids or [])
        self.criterion, self.metric_fns, self.optimizer = criterion, metric_fns, optimizer
        self.lr_scheduler, self.scheduler_interval = lr_scheduler, (config["lr_scheduler"] or {}).get("interval")
        self.accum_steps, self.grad_clip_norm = options["grad_accum_steps"], options["grad_clip_norm"]
        self.log_step, self.channels_last = options["log_step"], options["channels_last"]
        # Mixed precision: bf16 needs no loss scaling; fp16 does, and its scaler is checkpointed.
        self.amp_dtype = amp_dtype(options["amp"])
        self.scaler = torch.amp.GradScaler(device.type, enabled=options["amp"] == "fp16")
        # The recipe: the backbone frozen for the first epochs, an EMA of the weights, MixUp / CutMix.
        self.freezer = BackboneFreezer(self.raw_model, options["freeze_backbone_epochs"])
        self.ema = ModelEma(self.raw_model, **options["ema"]) if options["ema"] is not None else None
        self.mixup = build_mixer(config, dist.get_rank())
        self.raw_validation = False  # True while validating the raw weights beside the EMA (ema.validate_both)
        self.averaged_model = None  # what validation scores instead: the SWA average, or a top-k average
        self.top_k = TopK(options["save_top_k"], options["monitor"], options["average_top_k"])
        self.swa = Swa(options["swa"], self.epochs)
        self.train_metrics, self.valid_metrics = MetricTracker(metric_fns), MetricTracker(metric_fns)
        self.progress_bar = options["progress_bar"] and dist.is_main_process()
        self.record_images = options["tensorboard"]  # the task's pictures and a grid of inputs
        self.figures = ValidationFigures(self.task, self.record_images, options["confusion_max_classes"])
        self.samples_per_epoch = len(data_loader.train_indices)  # for the samples/second figure
        self.classes = getattr(data_loader.dataset, "classes", None)  # kept in checkpoints for inference
        self.loss_args = {}  # loss arguments resolved from the data ("balanced" weights), kept in checkpoints
        self.monitor = options["monitor"]
        self.monitor_mode, self.monitor_key = ("off", None) if self.monitor == "off" else self.monitor.split()
        if self.monitor_key and self.monitor_key.startswith("val_") and valid_data_loader is None:
            raise ConfigError("trainer.monitor", f"{self.monitor_key!r} needs a validation split, but "
                                                 "data_loader.args.validation_split is 0")
        self.monitor_best = math.inf if self.monitor_mode == "min" else -math.inf
        self.not_improved_count = self.best_epoch = self.global_step = 0
        self.start_epoch, self.resumed, self.rng_to_restore = 1, False, None
        self.resume_batches, self.resume_state = 0, {}  # batches of start_epoch already done, and their totals
        self.wandb_id = self.wandb_group = self.wandb_name = None
        self.stop_signal = self.run_dir = self.resume_command = None  # kfold_train.py sets its resume command
        self.checkpoint_writer = CheckpointWriter()
        # Each is called as callback(epoch, log) once the epoch's checkpoint is saved (tune.py prunes there).
        self.epoch_callbacks: list = []

    @property
    def eval_model(self) -> torch.nn.Module:
        """An average being scored (SWA, top-k), the EMA weights with ``trainer.ema`` (unless validating
        the raw ones), else the plain model."""
        if self.averaged_model is not None:
            return self.averaged_model
        if self.ema is not None and not self.raw_validation:
            return self.ema.module
        return self.model.module if isinstance(self.model, torch.nn.parallel.DistributedDataParallel) else self.model

    def _train_step(self, data, target) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass and the loss of one training batch: returns (loss, output)."""
        output = self.model(data)
        return self.criterion(output, target), output

    def _valid_step(self, data, target) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass and the loss of one validation batch: returns (loss, output)."""
        output = self.eval_model(data)
        return self.criterion(output, target), output

    def _after_epoch(self, log: dict, improved: bool, final: bool) -> None:
        """After the epoch's metrics row and checkpoint are written (``self.checkpoint_writer.wait()``
        waits for the disk): draws the task's validation pictures of the best and last epoch at the end."""
        self.figures.end_epoch(self.global_step, improved)
        if final and self.figures.last[1] is not None:
            dataset = getattr(self.valid_data_loader.dataset, "dataset", self.valid_data_loader.dataset)
            self.checkpoint_writer.wait()  # the final checkpoint is on disk before any picture is drawn
            self.figures.draw(self.recorder.tensorboard, getattr(dataset, "classes", None))

    def train(self) -> dict:
        """Train from ``start_epoch`` to ``epochs``; returns the last epoch's log."""
        self._start_recording()
        log = {}
        try:  # Ctrl-C or SIGTERM: the batch is finished and a checkpoint saved (exit 130 / 143)
            with on_stop_signals(self._request_stop):
                for epoch in range(self.start_epoch, self.epochs + 1):
                    log, stop_early = self._run_epoch(epoch)
                    if stop_early:
                        logger.info("no improvement of %s in %d epochs: stopping early", self.monitor_key,
                                    self.early_stop)
                        break
            log |= finish_averages(self, log.get("epoch", self.start_epoch - 1))
            best = {f"best_{self.monitor_key}": self.monitor_best} if self.monitor_key else {}
            self.recorder.finish(flatten(self.config.config), best | {"best_epoch": self.best_epoch,
                                 **{f"last_{k}": v for k, v in log.items() if isinstance(v, float)}})
        finally:
            self.checkpoint_writer.wait()
            self.recorder.close()
        return log

    def _start_recording(self) -> None:
        """Open the run's records (metrics.csv, TensorBoard, wandb) and set the RNG states."""
        self.run_dir = self.config.run_dir
        self.resume_command = self.resume_command or f"python {Path(sys.argv[0]).name} -r {self.run_dir}"
        self.recorder = RunRecorder(self.config, self.run_dir, dist.is_main_process(),
                                    resumed_epoch=self.start_epoch - 1 if self.resumed else None,
                                    resumed_step=self.global_step, wandb_id=self.wandb_id,
                                    wandb_group=self.wandb_group, wandb_name=self.wandb_name)
        self.wandb_id = self.recorder.wandb.run_id
        self.top_k.sync_files(self.run_dir)
        if not self.resumed:
            report_class_balance(self.data_loader, self.recorder.tensorboard)
        training_state.set_rng_states(self)
        if self.start_epoch > self.epochs:
            logger.warning("the run already finished epoch %d of %d: add trainer.epochs=N to train longer",
                           self.start_epoch - 1, self.epochs)

    def _run_epoch(self, epoch: int) -> tuple[dict, bool]:
        """Train and validate one epoch, then schedule, monitor, record and checkpoint it."""
        if self.freezer.set_epoch(epoch):
            self.model = rewrap_ddp(self.model)
        self.epoch_started = time.perf_counter() - self.resume_state.pop("epoch_time", 0.0)
        self.swa.begin_epoch(self, epoch)
        lrs = group_lrs(self.optimizer)  # the rates this epoch starts with: "lr", "lr_<group>"
        log = {"epoch": epoch, **self._train_epoch(epoch)}
        log |= {key: value for key, value in lrs.items() if key not in log}
        log["epoch_time"] = time.perf_counter() - self.epoch_started
        step_epoch_scheduler(self.lr_scheduler, self.scheduler_interval, log, self.monitor_key)
        improved, stop_early = update_monitor(self, log)
        # Record before the checkpoint: a crash in between redoes the epoch, never skips it.
        self.recorder.log_epoch(log, self.global_step, self.samples_per_epoch)
        self._save_checkpoint(epoch, log, best=improved)
        # Pictures last: whatever they cost, the epoch's row and checkpoint are already written.
        self._after_epoch(log, improved, final=stop_early or epoch == self.epochs)
        stop_signal = int(dist.all_max([float(self.stop_signal or 0)], self.device)[0])  # any process's
        if stop_signal:
            raise TrainingInterrupted(stop_signal, self.resume_command)
        for callback in self.epoch_callbacks:
            callback(epoch, log)
        return log, stop_early

    def _train_epoch(self, epoch: int) -> dict:
        """Train one epoch, then validate. Returns the epoch's log: the training loss and metrics, and
        the validation ones prefixed "val_" (and "raw_val_" for the raw weights beside the EMA)."""
        self.model.train()
        self.freezer.freeze_norms()  # BatchNorm of a frozen backbone stays in eval mode
        self.data_loader.set_epoch(epoch)
        first_batch, self.resume_batches = self.resume_batches, 0
        self.train_metrics.reset()
        if first_batch:  # resuming in the middle of this epoch
            self.data_loader.skip_batches(first_batch)
            self.train_metrics.load_state_dict(self.resume_state.pop("train_metrics"), self.device)
        batches, recent_losses = first_batch + len(self.data_loader), []
        # Bars appear after half a second (delay): a short epoch or validation prints none, and costs less.
        bar = tqdm(self.data_loader, desc=f"epoch {epoch}/{self.epochs}", total=batches, initial=first_batch,
                   disable=not self.progress_bar, leave=False, dynamic_ncols=True, delay=0.5)
        for batch_idx, (data, target) in enumerate(bar, start=first_batch):
            data, target = self._to_device(data, target)
            # MixUp / CutMix: mixed inputs and soft targets for the step; the metrics keep the hard labels.
            inputs, step_target = self.mixup(data, target, epoch, batch_idx) if self.mixup else (data, target)
            if self.record_images and self.global_step == 0 and batch_idx == 0 and is_image_batch(inputs):
                self.recorder.tensorboard.add_image("inputs/train_batch", input_grid(inputs), 0)
            step_now = (batch_idx + 1) % self.accum_steps == 0 or batch_idx + 1 == batches
            # Between optimizer steps DDP need not average gradients: no_sync skips that communication.
            sync = step_now or not isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with autocast(self.device, self.amp_dtype):
                    loss, output = self._train_step(inputs, step_target)
                self.scaler.scale(loss / self.accum_steps if self.accum_steps > 1 else loss).backward()
            self.train_metrics.update(loss.detach(), output.detach(), target)
            recent_losses.append(loss.detach())
            if not step_now:
                continue
            self._optimizer_step()
            # The only host syncs of the loop: every log_step optimizer steps and at the end.
            # (Under DDP a stop signal is only acted on there too: every process must join the all-reduce.)
            if (self.global_step % self.log_step == 0 or batch_idx + 1 == batches
                    or (self.stop_signal and not dist.is_distributed())):
                stop = self._check_losses(epoch, batch_idx, recent_losses, bar)
                recent_losses = []
                if stop:
                    self._save_checkpoint(epoch - 1, {}, batches_done=batch_idx + 1)
                    raise TrainingInterrupted(stop, self.resume_command)
        bar.close()
        log = self.train_metrics.result()
        self.swa.update(self)  # the epoch's weights into the SWA average, before it is validated
        if self.valid_data_loader is not None:
            if self.ema is not None and self.ema.validate_both:  # the raw weights too, as "raw_val_*"
                log |= {f"raw_{key}": value for key, value in self._valid_epoch(epoch, raw=True).items()}
            log |= self._valid_epoch(epoch)
        return log

    def _to_device(self, data, target):
        """The batch on the device (channels_last where set), and the targets as the task reads them."""
        target = self.task.prepare_target(to_device(target, self.device, self.channels_last))
        return to_device(data, self.device, self.channels_last), target

    def _optimizer_step(self) -> None:
        if self.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.raw_model)
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        if self.lr_scheduler is not None and self.scheduler_interval == "step":
            self.lr_scheduler.step()

    def _check_losses(self, epoch: int, batch_idx: int, losses: list, bar) -> int:
        """Stop on a non-finite loss; log the recent loss. Returns the stop signal all processes agree on."""
        mean_loss, stop_signal, write_failed = dist.check_recent_losses(
            losses, self.stop_signal, self.checkpoint_writer.failed(), self.device, epoch, batch_idx)
        if write_failed:
            self.checkpoint_writer.wait()  # the main process raises the write's own error
            raise CheckpointError("checkpoint", "the main process could not write a checkpoint (see its error)")
        bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        self.recorder.log_step_loss(mean_loss, self.global_step)
        return stop_signal

    def _valid_epoch(self, epoch: int, raw: bool = False) -> dict:
        """Validate on every sample of the validation split; returns {"val_loss": ..., "val_<metric>": ...}.
        With trainer.ema on, the EMA weights are validated (the model's own weights with ``raw``)."""
        self.raw_validation = raw
        self.eval_model.eval()
        self.valid_metrics.reset()
        self.figures.start_validation()
        with torch.inference_mode():
            for data, target in tqdm(self.valid_data_loader, desc=f"validating {epoch}", disable=not self.progress_bar,
                                     leave=False, dynamic_ncols=True, delay=0.5):
                data, target = self._to_device(data, target)
                with autocast(self.device, self.amp_dtype):
                    loss, output = self._valid_step(data, target)
                self.valid_metrics.update(loss, output, target)
                self.figures.update(output, target)
        self.figures.finish_validation()
        return self.valid_metrics.result(prefix="val_")

    def _request_stop(self, signum: int) -> None:
        if self.stop_signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.stop_signal = signum
        logger.warning("%s received: saving a checkpoint after this batch (Ctrl-C again to abort)",
                       signal.Signals(signum).name)

    def _save_checkpoint(self, epoch: int, log: dict, best: bool = False, batches_done: int = 0) -> None:
        """Write last.pth, and link checkpoint-epoch{N}.pth every save_period epochs and model_best.pth."""
        training_state.save(self, epoch, log, best, batches_done)

    def resume(self, point) -> None:
        """Continue the run a ``ResumePoint`` (utils/checkpoint/resume.py) was saved from."""
        training_state.restore(self, point)

    def load_weights(self, checkpoint: dict, path: Path) -> None:
        """--finetune: start from a checkpoint's model weights (a new head keeps its fresh values)."""
        training_state.load_weights(self, checkpoint, path)
