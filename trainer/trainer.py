import contextlib
import math

import torch
from tqdm import tqdm

from base import dist
from base.base_metric import confusion_matrix
from base.base_trainer import BaseTrainer
from base.metric_tracker import MetricTracker
from logger.visualization import input_grid, record_confusion_matrix
from utils.errors import ConfigError, NonFiniteLossError, TrainingInterrupted


class Trainer(BaseTrainer):
    """Supervised training: one forward, loss and backward per batch, then validation.

    Override ``_train_epoch`` or ``_valid_epoch`` in a subclass for other kinds of training and name
    the subclass in the config's ``trainer.type``.
    """

    def __init__(self, model, criterion, metric_fns: dict, optimizer, config, device, data_loader,
                 valid_data_loader=None, lr_scheduler=None, device_ids=None):
        super().__init__(model, criterion, metric_fns, optimizer, config, device, lr_scheduler, device_ids)
        options = config["trainer"]
        self.data_loader = data_loader
        self.valid_data_loader = valid_data_loader
        self.accum_steps = options["grad_accum_steps"]
        self.grad_clip_norm = options["grad_clip_norm"]
        self.log_step = options["log_step"]
        self.channels_last = options["channels_last"]
        self.progress_bar = options["progress_bar"] and dist.is_main_process()
        self.record_images = options["tensorboard"]  # the confusion matrix and a grid of inputs
        self.confusion_max_classes = options["confusion_max_classes"]
        self.valid_confusion = None
        self.best_confusion = (0, None)
        self.samples_per_epoch = len(data_loader.train_indices)
        self.classes = getattr(data_loader.dataset, "classes", None)
        self.train_metrics = MetricTracker(metric_fns)
        self.valid_metrics = MetricTracker(metric_fns)
        stopped_with = self.resume_state.get("batch_size", data_loader.batch_size)
        if self.resume_batches and stopped_with != data_loader.batch_size:
            raise ConfigError("data_loader.args.batch_size", f"the checkpoint stopped in the middle of an epoch with "
                                                             f"batch size {stopped_with}; resume with it (it may "
                                                             "change at the end of an epoch)")
        if self.monitor_key and self.monitor_key.startswith("val_") and valid_data_loader is None:
            raise ConfigError("trainer.monitor", f"{self.monitor_key!r} needs a validation split, but "
                                                 "data_loader.args.validation_split is 0")

    def _to_device(self, data: torch.Tensor) -> torch.Tensor:
        data = data.to(self.device, non_blocking=True)
        if self.channels_last and data.dim() == 4:
            data = data.contiguous(memory_format=torch.channels_last)
        return data

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_epoch(self, epoch: int) -> dict:
        """Train one epoch, then validate.

        Returns the epoch's log: the training loss and metrics, the validation ones prefixed "val_",
        and the learning rate the epoch trained with.
        """
        self.model.train()
        self.data_loader.set_epoch(epoch)
        first_batch, self.resume_batches = self.resume_batches, 0
        self.train_metrics.reset()
        if first_batch:  # resuming in the middle of this epoch
            self.data_loader.skip_batches(first_batch)
            self.train_metrics.load_state_dict(self.resume_state.pop("train_metrics"), self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        batches = first_batch + len(self.data_loader)
        recent_losses = []
        bar = tqdm(self.data_loader, desc=f"epoch {epoch}/{self.epochs}", total=batches, initial=first_batch,
                   disable=not self.progress_bar, leave=False, dynamic_ncols=True)
        for batch_idx, (data, target) in enumerate(bar, start=first_batch):
            data, target = self._to_device(data), target.to(self.device, non_blocking=True)
            if self.record_images and self.global_step == 0 and batch_idx == 0 and data.dim() == 4:
                self.recorder.tensorboard.add_image("inputs/train_batch", input_grid(data), 0)
            step_now = (batch_idx + 1) % self.accum_steps == 0 or batch_idx + 1 == batches
            # Between optimizer steps DDP need not average gradients: no_sync skips that communication.
            sync = step_now or not isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with self._autocast():
                    output = self.model(data)
                    loss = self.criterion(output, target)
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
            log |= self._valid_epoch(epoch)
        if self.lr_scheduler is not None and self.scheduler_interval == "epoch":
            if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.lr_scheduler.step(log[self.monitor_key or "loss"])
            else:
                self.lr_scheduler.step()
        return log | {"lr": lr}

    def _optimizer_step(self) -> None:
        if self.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        if self.lr_scheduler is not None and self.scheduler_interval == "step":
            self.lr_scheduler.step()

    def _check_losses(self, epoch: int, batch_idx: int, losses: list, bar) -> int:
        """Stop on a non-finite loss; log the recent loss. Returns the stop signal all processes agree on."""
        values = torch.stack(losses).tolist()  # the host sync
        bad = [i for i, value in enumerate(values) if not math.isfinite(value)]
        stop_signal = self._stop_signal or 0
        if dist.is_distributed():  # every process agrees on a non-finite loss and on a stop signal
            flags = torch.tensor([float(bool(bad)), float(stop_signal)], device=self.device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            stop_signal = int(flags[1])
            if flags[0] and not bad:
                raise NonFiniteLossError(f"epoch {epoch}: the loss is not finite on another process")
        if bad:
            kept = f"last.pth keeps the state after epoch {epoch - 1}" if epoch > 1 else "no checkpoint was written"
            raise NonFiniteLossError(f"epoch {epoch}, batch {batch_idx + 2 - len(values) + bad[0]}: the loss is "
                                     f"{values[bad[0]]}; {kept}. Lower the learning rate, set "
                                     "trainer.grad_clip_norm, or check the data")
        mean_loss = sum(values) / len(values)
        bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        self.recorder.log_step_loss(mean_loss, self.global_step)
        return stop_signal

    def _valid_epoch(self, epoch: int) -> dict:
        """Validate on every sample of the validation split; returns {"val_loss": ..., "val_<metric>": ...}."""
        # The plain model: validation needs no gradient sync, and each process has its own share.
        model = self.model.module if isinstance(self.model, torch.nn.parallel.DistributedDataParallel) \
            else self.model
        model.eval()
        self.valid_metrics.reset()
        confusion = None
        with torch.inference_mode():
            for data, target in tqdm(self.valid_data_loader, desc=f"validating {epoch}", disable=not self.progress_bar,
                                     leave=False, dynamic_ncols=True):
                data, target = self._to_device(data), target.to(self.device, non_blocking=True)
                with self._autocast():
                    output = model(data)
                    loss = self.criterion(output, target)
                self.valid_metrics.update(loss, output, target)
                if self.record_images and output.dim() == 2:
                    counts = confusion_matrix(output, target)
                    confusion = counts if confusion is None else confusion + counts
        if confusion is not None:
            self.valid_confusion = dist.all_reduce_sum(confusion)
        return self.valid_metrics.result(prefix="val_")

    def _after_epoch(self, log: dict, improved: bool, final: bool) -> None:
        """At the end, draw the validation confusion matrix of the best epoch (and of the last) in TensorBoard."""
        if self.valid_confusion is None:
            return
        if improved:
            self.best_confusion = (self.global_step, self.valid_confusion)
        if final:
            dataset = getattr(self.valid_data_loader.dataset, "dataset", self.valid_data_loader.dataset)
            classes = getattr(dataset, "classes", None)
            last = (self.global_step, self.valid_confusion)
            self.checkpoint_writer.wait()  # the final checkpoint is on disk before any picture is drawn
            for tag, (step, matrix) in (("best", self.best_confusion), ("last", last)):
                if matrix is not None:
                    record_confusion_matrix(self.recorder.tensorboard, f"val/confusion_matrix_{tag}",
                                            matrix.cpu().numpy(), classes, step, self.confusion_max_classes)

    def _epoch_state(self) -> dict:
        return super()._epoch_state() | {"train_metrics": self.train_metrics.state_dict(),
                                         "batch_size": self.data_loader.batch_size}
