"""Train a model from a config.

    python train.py -c config.json
    python train.py -r saved/Digits_ResNet/20261127_101500         # continue an interrupted run
    torchrun --nproc_per_node=2 train.py -c config.json            # DistributedDataParallel
"""
import math

import torch

import data_loader.data_loaders as module_data
import model.loss as module_loss
import model.metric as module_metric
import model.model as module_arch
import trainer as module_trainer
from base import dist
from base.metric_tracker import MetricTracker
from base.param_groups import build_optimizer
from base.schedulers import build_lr_scheduler
from base.seeding import configure_determinism, seed_everything
from config_parser import ConfigParser, training_arguments
from logger.logger import setup_logging
from utils.cli import blame, run_cli
from utils.config.components import resolve
from utils.util import prepare_device


def build_trainer(config: ConfigParser, **loader_kwargs):
    """Build everything the config names, in order, and the trainer that runs it.

    kfold_train.py calls this for each fold, with the fold's validation indices in ``loader_kwargs``.
    """
    data_loader = config.init_data_loader("data_loader", module_data, **loader_kwargs)
    valid_data_loader = data_loader.split_validation()

    model = config.init_obj("arch", module_arch)
    data_loader.dataset.check_labels(config["arch"]["args"].get("num_classes"), "arch.args.num_classes")
    if dist.is_distributed():
        device, device_ids = dist.local_device(config["n_gpu"]), []
    else:
        device, device_ids = prepare_device(config["n_gpu"])

    criterion = config.init_ftn("loss", module_loss)
    metrics = config.init_metrics(module_metric)
    optimizer = build_optimizer(config, model)  # parameter groups: base/param_groups.py
    steps_per_epoch = math.ceil(len(data_loader) / config["trainer"]["grad_accum_steps"])
    lr_scheduler = build_lr_scheduler(config, optimizer, steps_per_epoch)  # warmup: base/schedulers.py

    trainer_class = resolve(module_trainer, config["trainer"]["type"], "trainer.type")
    return trainer_class(model, criterion, metrics, optimizer, config=config, device=device,
                         data_loader=data_loader, valid_data_loader=valid_data_loader,
                         lr_scheduler=lr_scheduler, device_ids=device_ids)


def check_one_batch(trainer) -> torch.Tensor:
    """Push one training batch through the model, the loss and the metrics before training starts.

    A model that does not fit the data, or a loss or a metric with bad arguments, is then a one-line
    error now instead of a traceback in epoch 1. Nothing is trained. Returns the batch's inputs.
    """
    with blame("dataset", "cannot make a batch"):
        data, target = next(iter(trainer.data_loader))
    model, was_training = trainer.raw_model, trainer.raw_model.training
    model.eval()
    data, target = data.to(trainer.device), target.to(trainer.device)
    with torch.no_grad():
        with blame("arch", f"fails on a batch of shape {tuple(data.shape)}"):
            output = model(data)
        with blame("loss", "fails on the model's output"):
            loss = trainer.criterion(output, target)
        with blame("metrics", "fail on the model's output"):
            tracker = MetricTracker(trainer.metric_fns)
            tracker.update(loss, output, target)
            tracker.result(sync=False)
        if getattr(trainer, "mixup", None) is not None:
            with blame("loss", "fails on the soft targets (class probabilities) of trainer.mixup"):
                trainer.criterion(output, trainer.mixup(data, target, 1, 0)[1])
    model.train(was_training)
    return data


def dry_run(config: ConfigParser, trainer, data: torch.Tensor) -> None:
    """Print the resolved config and the model summary with one batch through it; write nothing."""
    print(config.to_json())
    print(trainer.raw_model.summary(data[:2]))
    print(f"train batches per epoch: {len(trainer.data_loader)}, validation batches: "
          f"{len(trainer.valid_data_loader) if trainer.valid_data_loader else 0}")
    print("dry run: the config is valid and every object was built; nothing was written")


def command_line():
    return training_arguments("Train a model from a config.",
                              resume_help="continue a run: a checkpoint, a run directory, or 'auto'")


def main(argv: list[str] | None = None) -> None:
    config = ConfigParser.from_args(command_line(), argv=argv)
    dist.init_distributed()
    setup_logging(None, config["trainer"]["verbosity"], dist.is_main_process())  # console until the run starts
    seed_everything(config["seed"])
    configure_determinism(config["deterministic"])

    trainer = build_trainer(config)
    data = check_one_batch(trainer)
    if config.dry_run:
        dry_run(config, trainer, data)
        return
    config.start_run()
    trainer.train()
    dist.close_distributed()


if __name__ == "__main__":
    run_cli(main)
