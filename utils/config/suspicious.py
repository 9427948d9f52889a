"""Settings that can be meant but usually are not: the run goes ahead, with one line
``warning: <setting>: <what it will do>``."""
import logging

logger = logging.getLogger(__name__)


def warn_about_run(config, train_samples: int, steps_per_epoch: int) -> list[str]:
    """Warn of a warmup or a frozen backbone as long as the run, and of a batch larger than the data.

    ``train_samples`` is the size of the training part, ``steps_per_epoch`` its optimizer steps per
    epoch on one process. Returns the warnings (also logged).

    Examples:
        >>> warn_about_run(config, len(data_loader.train_indices), steps_per_epoch)
        ['lr_scheduler.warmup.epochs: 5 is not shorter than trainer.epochs (3): ...']
    """
    epochs = config["trainer"]["epochs"]
    warnings = []
    warmup = (config["lr_scheduler"] or {}).get("warmup") or {}
    if warmup.get("epochs") is not None and warmup["epochs"] >= epochs:
        warnings.append(f"lr_scheduler.warmup.epochs: {warmup['epochs']} is not shorter than trainer.epochs "
                        f"({epochs}): the run ends inside the warmup and never trains at the configured rate")
    if warmup.get("steps") is not None and warmup["steps"] >= epochs * steps_per_epoch:
        warnings.append(f"lr_scheduler.warmup.steps: {warmup['steps']} is not fewer than the run's "
                        f"{epochs * steps_per_epoch} optimizer steps: the run ends inside the warmup and never "
                        "trains at the configured rate")
    frozen = config["trainer"]["freeze_backbone_epochs"]
    if frozen and frozen >= epochs:
        warnings.append(f"trainer.freeze_backbone_epochs: {frozen} is not fewer than trainer.epochs ({epochs}): "
                        "the backbone stays frozen for the whole run and only the head trains")
    batch_size = config["data_loader"].get("args", {}).get("batch_size")
    if isinstance(batch_size, int) and 0 < train_samples < batch_size:
        warnings.append(f"data_loader.args.batch_size: {batch_size} is larger than the {train_samples} training "
                        f"samples: every epoch is a single batch of {train_samples}")
    for warning in warnings:
        logger.warning("warning: %s", warning)
    return warnings


def warn_about_tta(tta: list, sample) -> list[str]:
    """Warn of a flip or another image transform as test-time augmentation of data that is not images
    (``sample``: one input of the data, a tensor): it would reorder a table's features."""
    dims = getattr(sample, "ndim", None)
    warnings = [f"inference.tta.{i}: {step['type']} on {dims}-D samples (not images): it moves the features of a "
                "table row, and the averaged predictions mix views the model never saw"
                for i, step in enumerate(tta) if dims is not None and dims < 3]
    for warning in warnings:
        logger.warning("warning: %s", warning)
    return warnings
