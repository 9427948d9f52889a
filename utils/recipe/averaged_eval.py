"""Evaluating an averaged model at the end of training: BatchNorm statistics recomputed over the
training data (``torch.optim.swa_utils.update_bn``), the validation split scored, a weights file written.

Shared by ``trainer.average_top_k`` (utils/checkpoint/top_k.py) and ``trainer.swa`` (utils/recipe/swa.py).
"""
import logging
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn

from utils import distributed as dist
from utils.checkpoint.averaging import weights_checkpoint
from utils.checkpoint.files import save_checkpoint
from utils.util import autocast

logger = logging.getLogger(__name__)


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, trainer) -> None:
    """Reset ``model``'s BatchNorm statistics and recompute them over one pass of the training data.

    Under DDP each process passes its own shard; the statistics are then averaged over the processes.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    batches = (trainer._to_device(data, target)[0] for data, target in trainer.data_loader)
    with autocast(trainer.device, trainer.amp_dtype):
        update_bn(batches, model)
    if dist.is_distributed():
        for norm in norms:
            for buffer in (norm.running_mean, norm.running_var):
                if buffer is not None:
                    buffer.copy_(dist.all_reduce_sum(buffer.clone()) / dist.get_world_size())


def evaluate_average(trainer, model: torch.nn.Module, epoch: int, path: Path, extra: dict) -> dict:
    """Recompute ``model``'s BatchNorm statistics, validate it as the trainer validates (``val_*``), and
    save its weights with those metrics (and ``extra``) as ``path``. Returns the metrics."""
    model.eval()
    recompute_batchnorm(model, trainer)
    metrics = dict(extra)
    if trainer.valid_data_loader is not None:
        before, trainer.averaged_model = trainer.averaged_model, model
        try:
            metrics |= trainer._valid_epoch(epoch)
        finally:
            trainer.averaged_model = before
    if dist.is_main_process():
        template = {"arch": type(trainer.raw_model).__name__, "epoch": epoch, "config": trainer.config.config,
                    "classes": [str(c) for c in trainer.classes] if trainer.classes is not None else None,
                    "loss_args": trainer.loss_args}
        state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
        save_checkpoint(weights_checkpoint(template, state_dict, metrics, extra.get("averaged_from", [])), path)
        scores = "  ".join(f"{key} {value:.4f}" for key, value in metrics.items() if isinstance(value, float))
        logger.info("saved %s: %s", path.name, scores or "(no validation split)")
    return metrics


def finish_averages(trainer, epoch: int) -> dict:
    """At the end of training: the top-k average (``trainer.average_top_k``) and the SWA average, each
    evaluated and saved. Returns their validation metrics as ``top_k_avg_val_*`` and ``swa_val_*``."""
    from utils.checkpoint.top_k import average_top_k

    found = {}
    averages = (("top_k_avg_", average_top_k(trainer, epoch)), ("swa_", trainer.swa.finish(trainer, epoch)))
    for prefix, metrics in averages:
        found |= {prefix + key: value for key, value in metrics.items() if key.startswith("val_")}
    return found
