"""Train a model from a config.

    python train.py -c config.json
    python train.py -r saved/Digits_ResNet/20261127_101500         # continue an interrupted run
    python train.py -c config.json --lr-find                       # suggest a learning rate
    torchrun --nproc_per_node=2 train.py -c config.json            # DistributedDataParallel
"""
import math

import torch

from base import BaseTrainer
from base.base_task import BaseTask
from base.metric_tracker import MetricTracker
from config_parser import ConfigParser, training_arguments
from logger.class_balance import split_summary
from logger.logger import setup_logging
from logger.lr_find import report_lr_find
from utils import distributed as dist
from utils.checkpoint.files import load_checkpoint
from utils.cli import blame, run_cli
from utils.config.components import parameters
from utils.config.suspicious import warn_about_run
from utils.data.class_weights import loss_args_from_data
from utils.data.splits import stratification_labels
from utils.data.teacher import build_extras
from utils.errors import ConfigError
from utils.recipe.lr_finder import lr_range_test
from utils.recipe.param_groups import build_optimizer
from utils.recipe.schedulers import build_lr_scheduler
from utils.seeding import configure_determinism, seed_everything
from utils.util import prepare_device, to_device


def build_trainer(config: ConfigParser, **loader_kwargs):
    """Build everything the config names, in order, and the trainer that runs it.

    kfold_train.py calls this for each fold, with the fold's validation indices in ``loader_kwargs``.
    """
    task = config.task  # what the targets mean: it checks them and adapts the loss and metrics
    dataset = loader_kwargs.pop("dataset", None)
    dataset = config.init_obj("dataset") if dataset is None else dataset
    # A distillation teacher's soft labels and pseudo-labelled samples ride with the training targets.
    num_outputs = config["arch"]["args"].get("num_classes") or getattr(task, "num_outputs", None)
    extras = build_extras(config, dataset, num_outputs, type(task).predictions_table is BaseTask.predictions_table)
    loader_kwargs = split_labels(config, task, dataset) | loader_kwargs
    data_loader = config.init_data_loader("data_loader", dataset=extras.dataset if extras else dataset,
                                          **loader_kwargs)
    if extras:
        extras.check_rows(data_loader.train_indices)
    valid_data_loader = data_loader.split_validation()

    model = config.init_obj("arch")
    task.check_labels(data_loader.dataset, config["arch"]["args"].get("num_classes"), "arch.args.num_classes")
    if dist.is_distributed():
        device, device_ids = dist.local_device(config["n_gpu"]), []
    else:
        device, device_ids = prepare_device(config["n_gpu"])

    # "balanced" class weights come from the training split; the checkpoint keeps them (loss_args).
    loss_args = loss_args_from_data(config, data_loader.dataset, data_loader.train_indices,
                                    config["arch"]["args"].get("num_classes") or data_loader.dataset.num_classes)
    criterion = task.wrap_loss(config.init_ftn("loss", **loss_args))
    if extras:
        task, criterion = extras.wrap(task, criterion)
    metrics = task.wrap_metrics(config.init_metrics())
    optimizer = build_optimizer(config, model)  # parameter groups: utils/recipe/param_groups.py
    steps_per_epoch = math.ceil(len(data_loader) / config["trainer"]["grad_accum_steps"])
    lr_scheduler = build_lr_scheduler(config, optimizer, steps_per_epoch)  # warmup: utils/recipe/schedulers.py
    warn_about_run(config, len(data_loader.train_indices), steps_per_epoch)  # a warmup as long as the run...

    trainer_class = config.lookup("trainer")
    trainer = trainer_class(model, criterion, metrics, optimizer, config=config, device=device,
                            data_loader=data_loader, valid_data_loader=valid_data_loader,
                            lr_scheduler=lr_scheduler, device_ids=device_ids, task=task)
    trainer.loss_args = loss_args
    if extras:
        trainer.mixup = extras.wrap_mixer(trainer.mixup)
    # Continuing a run, or starting one from another run's weights: one explicit step each.
    if config.resume is not None:
        trainer.resume(config.resume_point())
    elif config.finetune is not None:
        trainer.load_weights(load_checkpoint(config.finetune), config.finetune)
    return trainer


def split_labels(config: ConfigParser, task, dataset) -> dict:
    """The loader's ``stratify_labels``: the validation split stratifies on what the task says (MultiHead:
    the combined class; a regression target's quantile bins), as k-fold's folds do. Empty for a loader
    of one's own that does not take them.

    Examples:
        >>> loader = config.init_data_loader("data_loader", dataset=dataset, **split_labels(config, task, dataset))
    """
    names, _, any_keyword = parameters(config.lookup("data_loader"))
    if "stratify_labels" not in names and not any_keyword:
        return {}
    return {"stratify_labels": stratification_labels(task, dataset, config["kfold"]["n_bins"])}


def check_one_batch(trainer) -> torch.Tensor:
    """Push one training batch through the model, the loss and the metrics before training starts.

    A model that does not fit the data, or a loss or a metric with bad arguments, is then a one-line
    error now instead of a traceback in epoch 1. Nothing is trained. Returns the batch's inputs.
    """
    with blame("dataset", "cannot make a batch"):
        data, target = next(iter(trainer.data_loader))
    model, was_training = trainer.raw_model, trainer.raw_model.training
    model.eval()
    data, target = to_device(data, trainer.device), trainer.task.prepare_target(to_device(target, trainer.device))
    with torch.no_grad():
        if not same_code(type(trainer)._valid_step, BaseTrainer._valid_step):  # a custom step: check it as it is
            with blame("trainer.type", f"{type(trainer).__name__}._valid_step fails on a batch"):
                loss, output = trainer._valid_step(data, target)
        else:
            with blame("arch", f"fails on a batch of shape {tuple(getattr(data, 'shape', ()))}"):
                output = model(data)
            with blame("loss", "fails on the model's output"):
                loss = trainer.criterion(output, target)
        check_log_probabilities(trainer.config, output)
        with blame("metrics", "fail on the model's output"):
            tracker = MetricTracker(trainer.metric_fns)
            tracker.update(loss, output, target)
            tracker.result(sync=False)
        if getattr(trainer, "mixup", None) is not None:
            with blame("loss", "fails on the soft targets (class probabilities) of trainer.mixup"):
                trainer.criterion(output, trainer.mixup(data, target, 1, 0)[1])
    model.train(was_training)
    return data


def same_code(method, reference) -> bool:
    """True when ``method`` computes what ``reference`` does (the same bytecode; docstrings aside)."""
    code, other = method.__code__, reference.__code__
    return code.co_code == other.co_code and code.co_names == other.co_names


def check_log_probabilities(config: ConfigParser, output) -> None:
    """``nll_loss`` on a model that returns logits trains on nonsense without an error: stop it here."""
    loss = config["loss"] if isinstance(config["loss"], str) else config["loss"]["type"]
    if loss != "nll_loss" or not isinstance(output, torch.Tensor) or output.dim() < 2:
        return
    sums = output.float().exp().sum(dim=1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        raise ConfigError("loss", "nll_loss expects log-probabilities, but the model's outputs are not (their "
                                  "exp does not sum to 1 per sample): use \"cross_entropy\" for a model that "
                                  "returns logits, or end the model with log_softmax")


def dry_run(config: ConfigParser, trainer, data: torch.Tensor) -> None:
    """Print the resolved config and the model summary with one batch through it; write nothing."""
    print(config.to_json())
    print(trainer.raw_model.summary(data[:2]))
    print(split_summary(trainer.data_loader))
    print(f"train batches per epoch: {len(trainer.data_loader)}, validation batches: "
          f"{len(trainer.valid_data_loader) if trainer.valid_data_loader else 0}")
    print("dry run: the config is valid and every object was built; nothing was written")


def check_lr_find_args(args, config: ConfigParser) -> tuple[float, float, int] | None:
    """(lr_min, lr_max, steps) of ``--lr-find``, checked; None without it."""
    if not args.lr_find:
        return None
    if config.resume is not None:
        raise ConfigError("--lr-find", "starts from the config's weights, not a run's: use -c (or --finetune)")
    if not 0 < args.lr_min < args.lr_max:
        raise ConfigError("--lr-min", f"must be positive and below --lr-max ({args.lr_min} .. {args.lr_max})")
    if args.steps < 3:
        raise ConfigError("--steps", f"must be 3 or more, got {args.steps}")
    return args.lr_min, args.lr_max, args.steps


def command_line():
    return training_arguments("Train a model from a config.",
                              resume_help="continue a run: a checkpoint, a run directory, or 'auto'", lr_find=True)


def main(argv: list[str] | None = None) -> None:
    parser = command_line()
    config = ConfigParser.from_args(parser, argv=argv)
    lr_find = check_lr_find_args(parser.parse_intermixed_args(argv), config)
    dist.init_distributed()
    setup_logging(None, config["trainer"]["verbosity"], dist.is_main_process())  # console until the run starts
    config.resume_point()  # with -r: the checkpoint read, and a change resuming cannot honour refused, first
    seed_everything(config["seed"])
    configure_determinism(config["deterministic"])

    trainer = build_trainer(config)
    data = check_one_batch(trainer)
    if config.dry_run:
        dry_run(config, trainer, data)
        return
    if lr_find is not None:  # the range test instead of training: its curve in lr_find/, no run directory
        result = lr_range_test(trainer, *lr_find)
        report_lr_find(result, config.runs_dir / "lr_find", trainer.optimizer.param_groups,
                       config["optimizer"]["args"].get("lr") or trainer.optimizer.param_groups[0]["lr"])
    else:
        config.start_run()
        trainer.train()
    del trainer  # its DistributedDataParallel goes before the process group does
    dist.close_distributed()


if __name__ == "__main__":
    run_cli(main)
