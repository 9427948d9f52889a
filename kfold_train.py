"""k-fold cross-validation: each fold is a full training run of train.py's Trainer.

    python kfold_train.py -c config.json --folds 5
    python kfold_train.py -r saved/Digits_ResNet/20261127_101500       # resume: finished folds are skipped

Writes ``<run>/fold_{k}/`` (a run directory each), ``kfold_summary.csv`` (one row per fold, then the
mean and the standard deviation) and ``oof_predictions.csv`` (every training sample, predicted by
the fold that held it out).
"""
import json
import logging

import numpy as np

from base.metric_tracker import score
from config_parser import ConfigParser, training_arguments
from logger.logger import setup_logging
from train import build_trainer, check_one_batch, dry_run
from utils import distributed as dist
from utils.checkpoint.files import fold_dirs, load_model_weights, resume_candidates
from utils.checkpoint.top_k import best_weights
from utils.cli import CLI_OPTIONS, CliOption, on_stop_signals, run_cli
from utils.data.class_weights import loss_args_from_data
from utils.data.splits import describe_folds, group_folds, stratification_labels
from utils.data.workers import stop_workers
from utils.errors import ConfigError, TrainingInterrupted
from utils.predict import write_held_out_predictions
from utils.recipe.ema import model_weights
from utils.seeding import configure_determinism, seed_everything

logger = logging.getLogger("kfold")
KFOLD_OPTIONS = [*CLI_OPTIONS, CliOption(["--folds"], int, "kfold.n_splits", "number of folds")]


def make_folds(targets, n_samples: int, n_splits: int, stratified: bool, shuffle: bool, seed: int,
               groups=None) -> list:
    """[(train indices, held-out indices)] for each fold, from scikit-learn's (Stratified)KFold, or
    with ``groups`` its (Stratified)GroupKFold: every group held out by one fold (utils/data/splits.py).

    ``targets`` are the task's stratification labels (``task.stratify_labels``): one per sample, or a
    0/1 matrix (multi-label), split with iterative stratification (iterstrat's MultilabelStratifiedKFold).
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    if groups is not None:
        return group_folds(targets, groups, n_splits, stratified, shuffle, seed)
    if stratified and targets is None:
        raise ConfigError("kfold.stratified", "the dataset has no targets to stratify by; set it to false")
    splitter_class = StratifiedKFold if stratified else KFold
    if stratified and np.ndim(targets) == 2:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold as splitter_class
    splitter = splitter_class(n_splits=n_splits, shuffle=shuffle, random_state=seed if shuffle else None)
    try:
        return list(splitter.split(np.zeros(n_samples), targets if stratified else None))
    except ValueError as error:
        raise ConfigError("kfold.n_splits", str(error)) from None


def build_folds(config: ConfigParser, train_dataset) -> tuple[list, list | None]:
    """(the folds of ``train_dataset`` as the config's ``kfold`` section sets them, the groups they keep
    whole or None): the one fold builder of kfold_train.py and ``tune.py --kfold``.

    Stratified on the task's labels (``task.stratify_labels``: classes, quantile bins of a
    regression target, label sets), with ``dataset.groups`` (unless ``kfold.group`` is false) every
    group held out by one fold.

    Examples:
        >>> folds, groups = build_folds(config, config.init_obj("dataset"))
        >>> train_indices, held_out = folds[0]
    """
    options = config["kfold"]
    labels = stratification_labels(config.task, train_dataset, options["n_bins"])
    groups = getattr(train_dataset, "groups", None) if options["group"] else None
    folds = make_folds(labels, len(train_dataset), options["n_splits"], options["stratified"],
                       options["shuffle"], config["seed"] if options["seed"] is None else options["seed"], groups)
    return folds, groups


def check_same_folds(config: ConfigParser, folds: list) -> None:
    """When resuming, the folds must be those the run started with (same data and kfold settings)."""
    if config.run_dir is None:
        return
    for fold_dir in fold_dirs(config.run_dir):
        fold = int(fold_dir.name.split("_")[1])
        saved = fold_dir / "config.json"
        if not saved.is_file():
            continue  # created, but stopped before it began
        held_out = json.loads(saved.read_text())["data_loader"]["args"]["validation_split"]
        if fold >= len(folds) or sorted(held_out) != sorted(folds[fold][1].tolist()):
            raise ConfigError("kfold", f"the folds differ from those {config.run_dir} started with (its "
                                       f"{fold_dir.name} held out other samples): keep its kfold settings and "
                                       "data, or start a new run")


def run_fold(config: ConfigParser, fold: int, train_dataset, held_out: np.ndarray) -> dict:
    """Train one fold (or resume it), predict its held-out part, and return its summary row."""
    fold_dir = config.run_dir / f"fold_{fold}"
    fold_seed = config["seed"] + fold
    resumable = fold_dir.is_dir() and bool(resume_candidates(fold_dir))
    # The fold's config names its held-out samples, so that resuming the fold, or scoring its
    # checkpoint with `inference.py --split valid`, uses exactly them.
    fold_config = ConfigParser(config.config | {"seed": fold_seed}, run_dir=fold_dir,
                               resume=fold_dir if resumable else None,
                               modification={"+data_loader.args.validation_split": held_out.tolist()})
    fold_config.parent = config  # the k-fold run's config.json records resume changes with the fold's
    seed_everything(fold_seed)  # every fold starts from its own seed: nothing carries over
    trainer = build_trainer(fold_config, dataset=train_dataset)
    check_one_batch(trainer)
    trainer.resume_command = f"python kfold_train.py -r {config.run_dir}"
    trainer.wandb_group, trainer.wandb_name = f"{config['name']}/{config.run_dir.name}", f"fold_{fold}"
    fold_config.start_run()
    logger.info("fold_%d (%d of %d): %d training, %d held-out samples%s", fold, fold + 1, config["kfold"]["n_splits"],
                len(trainer.data_loader.train_indices), len(held_out), " (resumed)" if resumable else "")
    trainer.train()

    # model_best.pth, or the top-k / SWA average where it validated better; EMA weights with trainer.ema
    best_path, checkpoint = best_weights(fold_dir, trainer.monitor)
    load_model_weights(trainer.raw_model, model_weights(checkpoint), best_path)
    write_held_out_predictions(fold_dir / "oof_predictions.csv", trainer.raw_model, trainer.valid_data_loader,
                               held_out, train_dataset, trainer.device, trainer.task, trainer.amp_dtype,
                               trainer.progress_bar)
    stop_workers(trainer.data_loader, trainer.valid_data_loader)  # the next fold starts workers of its own
    row = {"fold": fold, "best_epoch": checkpoint["epoch"]}
    if trainer.monitor_mode != "off":
        best_value = checkpoint.get("monitor_best", checkpoint["metrics"].get(trainer.monitor_key))  # or the average's
        row[f"best_{trainer.monitor_key}"] = best_value
    row |= {key: value for key, value in checkpoint["metrics"].items() if key.startswith("val_")}
    if dist.is_main_process():
        (fold_dir / "fold_result.json").write_text(json.dumps(row, indent=4))
    dist.barrier()
    return row


def summarize(config: ConfigParser, rows: list[dict], train_dataset) -> None:
    """Write kfold_summary.csv and oof_predictions.csv; print and log the table and the OOF metrics."""
    import pandas as pd

    table = pd.DataFrame(rows)
    numeric = table.drop(columns="fold")
    stats = pd.DataFrame([{"fold": "mean", **numeric.mean()}, {"fold": "std", **numeric.std()}])
    summary = pd.concat([table.astype(object), stats.astype(object)])  # the fold rows keep integer epochs
    summary.to_csv(config.run_dir / "kfold_summary.csv", index=False)
    logger.info("k-fold summary (%s; std is the sample standard deviation):\n%s",
                config["trainer"]["monitor"], summary.to_string(index=False, float_format="{:.4g}".format))

    oof = pd.concat(pd.read_csv(config.run_dir / f"fold_{row['fold']}" / "oof_predictions.csv")
                    .assign(fold=row["fold"]) for row in rows)
    oof = oof_columns(oof.sort_values("id", kind="stable"), train_dataset, config["kfold"]["group"])
    oof.to_csv(config.run_dir / "oof_predictions.csv", index=False)
    task = config.task
    outputs, targets = task.outputs_from_table(oof)
    task.fit_oof(outputs, targets, config.run_dir)  # MultiLabel: per-label thresholds, oof_thresholds.json
    # "balanced" class weights of the out-of-fold loss: from all the training data the folds share out.
    loss_args = loss_args_from_data(config, train_dataset, np.arange(len(train_dataset)),
                                  config["arch"]["args"].get("num_classes") or train_dataset.num_classes)
    oof_metrics = {f"oof_{key}": value for key, value in score(config, outputs, targets, task, loss_args).items()}
    (config.run_dir / "oof_metrics.json").write_text(json.dumps(oof_metrics, indent=4))
    logger.info("out-of-fold, over all %d training samples: %s", len(oof),
                "  ".join(f"{key} {value:.4f}" for key, value in oof_metrics.items()))


def oof_columns(oof, train_dataset, use_groups: bool):
    """Put ``fold`` (the fold that held the sample out) and, with groups, ``group`` after ``id``."""
    columns = ["id", "fold"]
    groups = getattr(train_dataset, "groups", None)
    if groups is not None and use_groups:
        group_of = {str(train_dataset.sample_id(i)): group for i, group in enumerate(groups)}
        oof["group"] = oof["id"].astype(str).map(group_of)
        columns.append("group")
    return oof[columns + [c for c in oof.columns if c not in columns]]


def command_line():
    parser = training_arguments("k-fold cross-validation: one training run per fold.",
                                resume_help="continue an interrupted k-fold run directory")
    parser.add_argument("--folds", type=int, help="number of folds (sets kfold.n_splits)")
    return parser


def main(argv: list[str] | None = None) -> None:
    config = ConfigParser.from_args(command_line(), options=KFOLD_OPTIONS, argv=argv, kfold=True)
    if config.finetune is not None:
        raise ConfigError("--finetune", "is for train.py; fine-tune each fold with a config instead")
    dist.init_distributed()
    setup_logging(None, config["trainer"]["verbosity"], dist.is_main_process())
    seed_everything(config["seed"])
    configure_determinism(config["deterministic"])

    train_dataset = config.init_obj("dataset")
    folds, groups = build_folds(config, train_dataset)
    if config.dry_run:
        trainer = build_trainer(config, dataset=train_dataset, validation_split=folds[0][1])
        dry_run(config, trainer, check_one_batch(trainer))
        return
    check_same_folds(config, folds)
    config.start_run()
    if groups is not None:
        logger.info(describe_folds(folds, groups, config["kfold"]["stratified"]))
    rows = []
    # Between folds (the trainer handles them while it trains), Ctrl-C and SIGTERM stop at once:
    # an unfinished fold resumes from its checkpoint.
    with on_stop_signals(lambda signum: TrainingInterrupted(signum, f"python kfold_train.py -r {config.run_dir}")):
        for fold, (_, held_out) in enumerate(folds):
            result_file = config.run_dir / f"fold_{fold}" / "fold_result.json"
            if result_file.is_file():
                logger.info("fold_%d (%d of %d) is finished: skipping it", fold, fold + 1, len(folds))
                rows.append(json.loads(result_file.read_text()))
                continue
            rows.append(run_fold(config, fold, train_dataset, held_out))
            setup_logging(config.run_dir, config["trainer"]["verbosity"], dist.is_main_process())
        if dist.is_main_process():
            summarize(config, rows, train_dataset)
    dist.close_distributed()


if __name__ == "__main__":
    run_cli(main)
