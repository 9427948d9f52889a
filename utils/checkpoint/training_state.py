"""What a checkpoint of a training run holds, and how a trainer is put back into that state.

``capture`` makes the dict a checkpoint file holds; ``restore`` hands a ``ResumePoint``'s parts back
to the trainer: model, optimizer, scheduler, AMP scaler, EMA, position in the run, monitor, RNG states
and the running totals of a half-done epoch.
"""
import logging
import math
import time
from pathlib import Path

from utils import distributed as dist
from utils.checkpoint import top_k
from utils.checkpoint.files import FORMAT_VERSION, load_model_weights, strip_module_prefix
from utils.checkpoint.pretrained import load_matching
from utils.checkpoint.resume import ResumePoint
from utils.checkpoint.resume_rates import check_group_layout, group_options
from utils.errors import CheckpointError, ConfigError
from utils.seeding import get_rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__)


def capture(trainer, epoch: int, log: dict, batches_done: int = 0) -> dict:
    """Everything needed to continue exactly after ``epoch`` (and ``batches_done`` batches of the next)."""
    return {
        "format_version": FORMAT_VERSION,
        "arch": type(trainer.raw_model).__name__,
        "epoch": epoch,
        "batches_done": batches_done,
        "global_step": trainer.global_step,
        "state_dict": trainer.raw_model.state_dict(),  # the plain model: no wrapper prefixes
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.lr_scheduler.state_dict() if trainer.lr_scheduler is not None else None,
        "scaler": trainer.scaler.state_dict(),
        "monitor_best": trainer.monitor_best,
        "not_improved_count": trainer.not_improved_count,
        "best_epoch": trainer.best_epoch,
        "rng_states": dist.gather_objects(get_rng_state()),  # one per process
        "config": trainer.config.config,
        "wandb_id": trainer.wandb_id,
        "metrics": log,
        "classes": [str(name) for name in trainer.classes] if trainer.classes is not None else None,
        "loss_args": trainer.loss_args,
        "epoch_state": dist.gather_objects(epoch_state(trainer)) if batches_done else {},  # one per process
        "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
        "top_k": trainer.top_k.state_dict(),
        "swa": trainer.swa.state_dict(),
    }


def save(trainer, epoch: int, log: dict, best: bool = False, batches_done: int = 0) -> None:
    """Write the run's last.pth (atomic, checksummed); link checkpoint-epoch{N}.pth every save_period
    epochs and model_best.pth when the monitored value improved. Every process takes part (RNG states)."""
    entered = batches_done == 0 and trainer.top_k.update(epoch, log)  # the checkpoint holds the new list
    state = capture(trainer, epoch, log, batches_done)
    if not dist.is_main_process():
        return
    # hard links to last.pth: no extra disk space, and atomic
    links = [trainer.run_dir / top_k.file_name(epoch)] if entered else []
    if batches_done == 0 and trainer.save_period and epoch % trainer.save_period == 0:
        links.append(trainer.run_dir / f"checkpoint-epoch{epoch}.pth")
    if best:
        links.append(trainer.run_dir / "model_best.pth")
    wait = best or entered or trainer.config.unsaved_changes  # wait for the disk: a failed write stops here
    trainer.checkpoint_writer.save(state, trainer.run_dir / "last.pth", links, wait=wait)
    if entered:  # the listing once the new file is on disk, then the file that dropped out goes
        trainer.top_k.write_listing(trainer.run_dir)
    if wait:
        trainer.config.save_config()  # resume changes reach config.json once a checkpoint holds them
    if best:
        logger.info("saved model_best.pth (%s %.6g)", trainer.monitor_key, trainer.monitor_best)


def epoch_state(trainer) -> dict:
    """What is needed to finish a half-done epoch exactly: its time so far, the training metrics'
    running totals and the batch size (the position in the epoch counts batches of that size)."""
    return {"epoch_time": time.perf_counter() - trainer.epoch_started,
            "train_metrics": trainer.train_metrics.state_dict(), "batch_size": trainer.data_loader.batch_size}


def restore(trainer, point: ResumePoint) -> None:
    """Put ``trainer`` in the state ``point`` was saved in, with the config's changes applied from the
    resumed epoch on. The RNG states are set when training starts (``trainer.rng_to_restore``)."""
    logger.info("resuming from %s", point.path)
    if point.get("averaged_from") is not None:
        raise CheckpointError(str(point.path), "holds averaged weights without a training state: start a new "
                                               "run from them with --finetune")
    check_arch(trainer, point.checkpoint, point.path)
    state = point.own("epoch_state")  # stopped mid-epoch: this process's running totals
    stopped_with = state.get("batch_size", trainer.data_loader.batch_size)
    if point["batches_done"] and stopped_with != trainer.data_loader.batch_size:
        raise ConfigError("data_loader.args.batch_size", f"the checkpoint stopped in the middle of an epoch with "
                                                         f"batch size {stopped_with}; resume with it (it may "
                                                         "change at the end of an epoch)")
    load_model_weights(trainer.raw_model, point["state_dict"], point.path)
    check_group_layout(trainer.optimizer, point["optimizer"])
    new_groups = group_options(trainer.optimizer)  # the new config's options, before the state replaces them
    trainer.optimizer.load_state_dict(point["optimizer"])
    if trainer.lr_scheduler is not None and point["lr_scheduler"] is not None \
            and not point.replays_schedule(trainer.config.config):  # else rebuilt by apply_changes
        trainer.lr_scheduler.load_state_dict(point["lr_scheduler"])
    trainer.scaler.load_state_dict(point["scaler"])
    if trainer.ema is not None and point.get("ema"):
        trainer.ema.load_state_dict(point["ema"])
    elif trainer.ema is not None:
        logger.warning("the checkpoint has no EMA weights: the EMA starts from the current weights")
    steps_per_epoch = math.ceil(len(trainer.data_loader) / trainer.accum_steps)
    trainer.lr_scheduler = point.apply_changes(trainer.config, trainer.optimizer, trainer.lr_scheduler, new_groups,
                                               steps_per_epoch)
    trainer.top_k.load_state_dict(point.get("top_k"))  # a smaller save_top_k drops the worst at once
    trainer.swa.load_state_dict(trainer, point.get("swa"))
    trainer.start_epoch, trainer.resume_batches = point["epoch"] + 1, point["batches_done"]
    trainer.resume_state, trainer.global_step = dict(state), point["global_step"]
    if point["config"]["trainer"]["monitor"] == trainer.monitor:
        trainer.monitor_best = point["monitor_best"]
        trainer.not_improved_count = point["not_improved_count"]
        trainer.best_epoch = point["best_epoch"]
    trainer.wandb_id = point["wandb_id"]
    trainer.resumed = True
    trainer.rng_to_restore = point.own("rng_states")


def set_rng_states(trainer) -> None:
    """When training starts: the resumed run's RNG states, or on a new run a seed of its own for each
    process beside the first (different dropout masks per process)."""
    if trainer.rng_to_restore is not None:
        set_rng_state(trainer.rng_to_restore)
    elif dist.get_rank() > 0:
        seed_everything(trainer.config["seed"] + dist.get_rank())


def load_weights(trainer, checkpoint: dict, path: Path) -> None:
    """--finetune: the model weights only; tensors whose shape changed (a new head) are skipped."""
    check_arch(trainer, checkpoint, path)
    state_dict = strip_module_prefix(checkpoint["state_dict"], trainer.raw_model.state_dict())
    load_matching(trainer.raw_model, state_dict, str(path), where="--finetune")  # a new head keeps its fresh values
    logger.info("fine-tuning from the weights of %s (epoch %d)", path, checkpoint["epoch"])


def check_arch(trainer, checkpoint: dict, path: Path) -> None:
    if checkpoint["arch"] != trainer.config["arch"]["type"]:
        raise CheckpointError(str(path), f"holds a {checkpoint['arch']} model, but the config's arch "
                                         f"is {trainer.config['arch']['type']}")
