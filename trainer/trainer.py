import contextlib
import logging
import math

import torch
from tqdm import tqdm

from base.base_task import BaseTask
from base.base_trainer import BaseTrainer
from base.metric_tracker import MetricTracker
from logger.class_balance import report_class_balance
from logger.visualization import input_grid
from utils import distributed as dist
from utils.errors import CheckpointError, ConfigError, NonFiniteLossError, TrainingInterrupted
from utils.recipe.mixup import build_mixer
from utils.util import autocast, is_image_batch, to_device

logger = logging.getLogger(__name__)

class Trainer(BaseTrainer):
    """Supervised training: one forward, loss and backward per batch, then validation.

    To change what one batch does, override the small hooks and name the subclass in ``trainer.type``:

    - ``_train_step(data, target) -> (loss, output)``: the forward pass and loss of a training batch;
    - ``_valid_step(data, target) -> (loss, output)``: the same for validation.

    The loop around them keeps everything else: moving the batch to the device, autocast, loss
    scaling, accumulation and DDP ``no_sync``, clipping, the optimizer and scheduler steps, metrics,
    the non-finite check, logging, the progress bar, stop signals and exact mid-epoch resume.
    Override ``_train_epoch`` only for a different loop (``BaseTrainer.train`` still steps
    epoch schedulers, monitors, checkpoints and stops early).

    Examples:
        >>> class MixupTrainer(Trainer):
        ...     def _train_step(self, data, target):
        ...         lam, perm = 0.7, torch.randperm(len(data), device=data.device)
        ...         output = self.model(lam * data + (1 - lam) * data[perm])
        ...         loss = lam * self.criterion(output, target) + (1 - lam) * self.criterion(output, target[perm])
        ...         return loss, output
    """

    def __init__(self, model, criterion, metric_fns: dict, optimizer, config, device, data_loader,
                 valid_data_loader=None, lr_scheduler=None, device_ids=None, task=None):
        super().__init__(model, criterion, metric_fns, optimizer, config, device, lr_scheduler, device_ids)
        options = config["trainer"]
        self.data_loader = data_loader
        self.task = task if task is not None else BaseTask()  # single-label classification by default
        self.valid_data_loader = valid_data_loader
        self.accum_steps = options["grad_accum_steps"]
        self.grad_clip_norm = options["grad_clip_norm"]
        self.log_step = options["log_step"]
        self.channels_last = options["channels_last"]
        self.progress_bar = options["progress_bar"] and dist.is_main_process()
        self.record_images = options["tensorboard"]  # the task's pictures and a grid of inputs
        self.valid_figure = None
        self.best_figure = (0, None)
        self.confusion_max_classes = options["confusion_max_classes"]
        self.samples_per_epoch = len(data_loader.train_indices)
        self.classes = getattr(data_loader.dataset, "classes", None)
        self.train_metrics = MetricTracker(metric_fns)
        self.valid_metrics = MetricTracker(metric_fns)
        self.mixup = build_mixer(config, dist.get_rank())  # MixUp / CutMix of training batches, or None
        if self.monitor_key and self.monitor_key.startswith("val_") and valid_data_loader is None:
            raise ConfigError("trainer.monitor", f"{self.monitor_key!r} needs a validation split, but "
                                                 "data_loader.args.validation_split is 0")

    def resume(self, checkpoint: dict, path) -> None:
        epoch_state = checkpoint["epoch_state"]  # stopped mid-epoch: one per process, the same batch size
        epoch_state = epoch_state[0] if isinstance(epoch_state, list) else epoch_state
        stopped_with = epoch_state.get("batch_size", self.data_loader.batch_size)
        if checkpoint["batches_done"] and stopped_with != self.data_loader.batch_size:
            raise ConfigError("data_loader.args.batch_size", f"the checkpoint stopped in the middle of an epoch with "
                                                             f"batch size {stopped_with}; resume with it (it may "
                                                             "change at the end of an epoch)")
        super().resume(checkpoint, path)

    # -- the hooks a subclass overrides ----------------------------------------------------------
    def _train_step(self, data, target) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass and the loss of one training batch: returns (loss, output).

        Runs inside autocast (and DDP's no_sync between optimizer steps); the loop does the backward
        pass, the optimizer step and the metrics. ``self.model`` is the wrapped model to call.
        """
        output = self.model(data)
        return self.criterion(output, target), output

    def _valid_step(self, data, target) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward pass and the loss of one validation batch: returns (loss, output).

        Runs under ``torch.inference_mode()`` and autocast; ``self.eval_model`` is the model to call.
        """
        output = self.eval_model(data)
        return self.criterion(output, target), output

    def _to_device(self, batch):
        return to_device(batch, self.device, self.channels_last)

    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _train_epoch(self, epoch: int) -> dict:
        """Train one epoch, then validate.

        Returns the epoch's log: the training loss and metrics, the validation ones prefixed "val_",
        and the learning rate the epoch trained with.
        """
        self.model.train()
        self.freezer.freeze_norms()  # BatchNorm of a frozen backbone stays in eval mode
        self.data_loader.set_epoch(epoch)
        first_batch, self.resume_batches = self.resume_batches, 0
        self.train_metrics.reset()
        if first_batch:  # resuming in the middle of this epoch
            self.data_loader.skip_batches(first_batch)
            self.train_metrics.load_state_dict(self.resume_state.pop("train_metrics"), self.device)
        batches = first_batch + len(self.data_loader)
        recent_losses = []
        # Bars appear after half a second (delay): a short epoch or validation prints none, and costs less.
        bar = tqdm(self.data_loader, desc=f"epoch {epoch}/{self.epochs}", total=batches, initial=first_batch,
                   disable=not self.progress_bar, leave=False, dynamic_ncols=True, delay=0.5)
        for batch_idx, (data, target) in enumerate(bar, start=first_batch):
            data, target = self._to_device(data), self.task.prepare_target(self._to_device(target))
            # MixUp / CutMix: mixed inputs and soft targets for the step; the metrics keep the hard labels.
            inputs, step_target = self.mixup(data, target, epoch, batch_idx) if self.mixup else (data, target)
            if self.record_images and self.global_step == 0 and batch_idx == 0 and is_image_batch(inputs):
                self.recorder.tensorboard.add_image("inputs/train_batch", input_grid(inputs), 0)
            step_now = (batch_idx + 1) % self.accum_steps == 0 or batch_idx + 1 == batches
            # Between optimizer steps DDP need not average gradients: no_sync skips that communication.
            sync = step_now or not isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with self._autocast():
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
                    or (self._stop_signal and not dist.is_distributed())):
                stop = self._check_losses(epoch, batch_idx, recent_losses, bar)
                recent_losses = []
                if stop:
                    self._save_checkpoint(epoch - 1, {}, batches_done=batch_idx + 1)
                    raise TrainingInterrupted(stop, self.resume_command)
        bar.close()

        log = self.train_metrics.result()
        if self.valid_data_loader is not None:
            if self.ema is not None and self.ema.validate_both:  # the raw weights too, as "raw_val_*"
                log |= {f"raw_{key}": value for key, value in self._valid_epoch(epoch, raw=True).items()}
            log |= self._valid_epoch(epoch)
        return log

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
        values = torch.stack(losses).tolist()  # the host sync
        bad = [i for i, value in enumerate(values) if not math.isfinite(value)]
        # Every process agrees on a non-finite loss, a stop signal and a failed checkpoint write.
        any_bad, stop_signal, write_failed = dist.all_max(
            [float(bool(bad)), float(self._stop_signal or 0), float(self.checkpoint_writer.failed())], self.device)
        if write_failed:
            self.checkpoint_writer.wait()  # the main process raises the write's own error
            raise CheckpointError("checkpoint", "the main process could not write a checkpoint (see its error)")
        if any_bad and not bad:
            raise NonFiniteLossError(f"epoch {epoch}: the loss is not finite on another process")
        if bad:
            kept = f"last.pth keeps the state after epoch {epoch - 1}" if epoch > 1 else "no checkpoint was written"
            raise NonFiniteLossError(f"epoch {epoch}, batch {batch_idx + 2 - len(values) + bad[0]}: the loss is "
                                     f"{values[bad[0]]}; {kept}. Lower the learning rate, set "
                                     "trainer.grad_clip_norm, or check the data")
        mean_loss = sum(values) / len(values)
        bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        self.recorder.log_step_loss(mean_loss, self.global_step)
        return int(stop_signal)

    def _valid_epoch(self, epoch: int, raw: bool = False) -> dict:
        """Validate on every sample of the validation split; returns {"val_loss": ..., "val_<metric>": ...}.

        With trainer.ema on, the EMA weights are validated (the model's own weights with ``raw``).
        """
        # The plain model: validation needs no gradient sync, and each process has its own share.
        self._raw_validation = raw
        self.eval_model.eval()
        self.valid_metrics.reset()
        figure = None  # the state of the task's pictures (the confusion matrix, a scatter plot)
        with torch.inference_mode():
            for data, target in tqdm(self.valid_data_loader, desc=f"validating {epoch}", disable=not self.progress_bar,
                                     leave=False, dynamic_ncols=True, delay=0.5):
                data, target = self._to_device(data), self.task.prepare_target(self._to_device(target))
                with self._autocast():
                    loss, output = self._valid_step(data, target)
                self.valid_metrics.update(loss, output, target)
                if self.record_images:
                    figure = self.task.figure_update(figure, output, target)
        if self.record_images:
            self.valid_figure = self.task.figure_reduce(figure)
        return self.valid_metrics.result(prefix="val_")

    def _on_run_start(self) -> None:
        report_class_balance(self.data_loader, self.recorder.tensorboard)

    def _after_epoch(self, log: dict, improved: bool, final: bool) -> None:
        """At the end, draw the task's validation pictures of the best epoch (and of the last) in TensorBoard."""
        if self.valid_figure is None:
            return
        if improved:
            self.best_figure = (self.global_step, self.valid_figure)
        if final:
            dataset = getattr(self.valid_data_loader.dataset, "dataset", self.valid_data_loader.dataset)
            classes = getattr(dataset, "classes", None)
            last = (self.global_step, self.valid_figure)
            self.checkpoint_writer.wait()  # the final checkpoint is on disk before any picture is drawn
            for tag, (step, state) in (("best", self.best_figure), ("last", last)):
                if state is None:
                    continue
                try:
                    self.task.record_figures(self.recorder.tensorboard, state, classes, tag, step,
                                             self.confusion_max_classes)
                except Exception as error:  # a picture must never cost the run
                    logger.warning("could not draw the validation pictures: %s: %s", type(error).__name__, error)

    def _epoch_state(self) -> dict:
        return super()._epoch_state() | {"train_metrics": self.train_metrics.state_dict(),
                                         "batch_size": self.data_loader.batch_size}
