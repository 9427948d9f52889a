"""Predict with a trained model or an ensemble, and score the predictions when labels are known.

    python inference.py --resume saved/Digits_ResNet/20261127_101500/model_best.pth
    python inference.py --resume saved/Digits_ResNet/20261127_120000       # a k-fold run: all folds
    python inference.py --resume a.pth --resume b.pth --output submission/predictions.csv
    python inference.py --resume saved/Digits_ResNet/20261127_101500/model.onnx   # export.py's ONNX model
    python inference.py --resume saved/Digits_ResNet/20261127_120000 --probabilities   # id + prob_* only

The config is read from the (first) checkpoint; ``-c`` and KEY.PATH=VALUE change it. The data is the
config's test data: the "inference" section's dataset if there is one, else the "dataset" section
with ``train: false``. ``--split valid`` scores the run's validation split instead.
"""
import logging
import os
from pathlib import Path

import numpy as np
import torch

from base.metric_tracker import Scorer
from config_parser import ConfigParser
from logger.logger import setup_logging
from train import split_labels
from utils.analysis.temperature import TemperatureScaled, load_temperature
from utils.checkpoint.files import best_or_last, fold_dirs, load_checkpoint, load_model_weights
from utils.cli import ArgumentParser, blame, on_stop_signals, run_cli
from utils.config.components import build_transform, call, lookup_type, parameters, section_module
from utils.config.overrides import parse_overrides
from utils.config.suspicious import warn_about_tta
from utils.errors import CheckpointError, ConfigError, DataError, PredictionInterrupted
from utils.export.card import exported_checkpoint
from utils.export.wrappers import OnnxModel
from utils.predict import check_ensemble, check_output_path, predict_to_csv
from utils.recipe.ema import model_weights
from utils.submission import submission_csv, write_submission
from utils.util import amp_dtype, prepare_device, read_json

logger = logging.getLogger("inference")


def checkpoint_paths(targets: list[str]) -> list[Path]:
    """The checkpoints named by --resume: files, run directories (model_best.pth) or k-fold runs (every fold)."""
    paths = []
    for target in map(Path, targets):
        if target.is_file():
            paths.append(target)
        elif target.is_dir():
            paths += [best_or_last(run_dir) for run_dir in fold_dirs(target) or [target]]
        else:
            raise CheckpointError(str(target), "no such checkpoint file or run directory")
    return paths


def test_loader(config: ConfigParser, split: str):
    """The loader of the data to predict: the test data, or the run's validation split."""
    if split == "valid":
        dataset = config.init_obj("dataset")  # the run's own split, stratified as it was
        valid_loader = config.init_data_loader("data_loader", dataset=dataset,
                                               **split_labels(config, config.task, dataset)).split_validation()
        if valid_loader is None:
            raise ConfigError("inference.split", "'valid' needs a validation split, but validation_split is 0")
        return valid_loader
    section = "inference.dataset" if config["inference"]["dataset"] is not None else "dataset"
    args = {}
    if section == "dataset":
        dataset_class = lookup_type(section_module("dataset"), config["dataset"]["type"], "dataset.type")
        if "train" not in parameters(dataset_class)[0]:
            raise ConfigError("inference.dataset", f"{dataset_class.__name__} has no 'train' argument: name the "
                                                   "test data in an \"inference\" section")
        args["train"] = False
    else:
        # The test data is prepared as the training data was, unless the section says otherwise.
        inherited = config["dataset"].get("args", {}).get("eval_transform")
        if inherited and "eval_transform" not in config["inference"]["dataset"].get("args", {}):
            args["eval_transform"] = build_transform(inherited, "dataset.args.eval_transform")
    dataset = config.init_obj(section, **args).evaluation()
    loader_section = "inference.data_loader" if config["inference"]["data_loader"] is not None else "data_loader"
    return config.init_data_loader(loader_section, dataset=dataset, **prediction_loader_args(config, loader_section))


def prediction_loader_args(config: ConfigParser, section: str) -> dict:
    """What the test loader overrides in its section: every sample once, in order, none held out.

    How the training part is drawn (``sampler``, ``samples_per_epoch``) and ``drop_last`` are about
    training: the test data is read as it is, labelled or not.
    """
    args = config.get(section).get("args", {})
    overrides = {"sampler": None, "samples_per_epoch": None, "drop_last": False}
    return {"validation_split": 0, "shuffle": False} | {key: value for key, value in overrides.items() if key in args}


def load_model(config: ConfigParser, checkpoint: dict, path: Path, device: torch.device,
               own_arch: bool, use_ema: bool = True) -> torch.nn.Module:
    """The model of a checkpoint, built from its own arch section or from the config's.

    A checkpoint of a run with trainer.ema gives its EMA weights, unless ``use_ema`` is False.
    """
    arch = checkpoint["config"]["arch"] if own_arch else config["arch"]
    if checkpoint["arch"] != arch["type"]:
        raise CheckpointError(str(path), f"holds a {checkpoint['arch']} model, but the config's arch is "
                                         f"{arch['type']}")
    model = call(lookup_type(section_module("arch"), arch["type"], "arch.type"), "arch", **arch.get("args", {}))
    load_model_weights(model, model_weights(checkpoint, use_ema), path)
    model = model.to(device)
    if config["trainer"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return model


def calibrated(models: list, config: ConfigParser, resume: list[str], paths: list[Path]) -> list:
    """The models with their logits divided by the temperature analyze.py saved with the run
    (calibration.json), for one classification run or k-fold run; else the models as they are."""
    if len(resume) != 1 or config["task"]["type"] != "Classification":
        return models
    temperature = load_temperature(Path(resume[0]) if Path(resume[0]).is_dir() else paths[0].parent)
    if temperature is None:
        return models
    logger.info("calibrated: logits divided by the temperature %.4g of calibration.json", temperature)
    return [TemperatureScaled(model, temperature) for model in models]


def predict_and_score(config: ConfigParser, task, models: list, loader, dataset, output: Path, classes, device,
                      loss_args: dict | None = None, probabilities_only: bool = False) -> None:
    """Stream the predictions to ``output``; with labels, print and log the loss and the metrics
    (``loss_args``: the run's "balanced" class weights, so the loss is the one it trained with).
    ``probabilities_only``: write ``id`` and the soft labels only (``--probabilities``)."""
    tta = [build_transform([step], f"inference.tta.{i}") for i, step in enumerate(config["inference"]["tta"])]
    if tta:
        logger.info("test-time augmentation: %d views of each batch averaged, the batch itself and %s", len(tta) + 1,
                    ", ".join(repr(transform.transforms[0]) for transform in tta))
    if tta and len(loader.dataset):
        warn_about_tta(config["inference"]["tta"], loader.dataset[0][0])  # a flip of a table's features
    data_section = "inference.dataset" if config["inference"]["dataset"] is not None else "dataset"
    indices = loader.dataset.indices if hasattr(loader.dataset, "indices") else range(len(dataset))
    ids = [dataset.sample_id(int(i)) for i in indices]
    labelled = dataset.targets is not None and len(dataset.targets) > 0 and bool(task.known_targets(
        torch.as_tensor(np.asarray([dataset.targets[int(i)] for i in indices], dtype=np.float64))).all())
    scorer = Scorer(config, task, loss_args) if labelled else None
    stop = on_stop_signals(lambda signum: PredictionInterrupted(signum, output))  # and leave no partial file
    with stop, blame(data_section, "cannot predict on this data"):
        predict_to_csv(output, models, loader, ids, device, task, classes, labelled=labelled,
                       on_batch=scorer.update if scorer else None, progress=config["trainer"]["progress_bar"],
                       amp_dtype=amp_dtype(config["trainer"]["amp"]), tta=tta,
                       channels_last=config["trainer"]["channels_last"], probabilities_only=probabilities_only)
    logger.info("wrote %s", output)
    if scorer is not None:
        logger.info("  ".join(f"{key} {value:.6f}" for key, value in scorer.result().items()))


def command_line() -> ArgumentParser:
    parser = ArgumentParser(description="Predict with a trained model or an ensemble of them.")
    parser.add_argument("-r", "--resume", action="append", required=True, metavar="CKPT",
                        help="a checkpoint, a run directory, a k-fold run directory or an exported .onnx "
                             "model; repeat to ensemble")
    parser.add_argument("-c", "--config", help="config file (default: the one stored in the checkpoint)")
    parser.add_argument("-o", "--output", help="predictions CSV (default: predictions.csv beside the checkpoint)")
    parser.add_argument("--probabilities", action="store_true",
                        help="write only id and the soft labels (prob_* columns; a regression's predictions), "
                             "e.g. as a distillation teacher or for pseudo-labels (default: probabilities.csv)")
    parser.add_argument("--split", choices=["test", "valid"], help="sets inference.split")
    parser.add_argument("--bs", "--batch_size", type=int, help="batch size (sets data_loader.args.batch_size)")
    parser.add_argument("-d", "--device", help="GPUs to use, e.g. 0 (sets CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--no-ema", action="store_true",
                        help="predict with the model's own weights, not the EMA weights of a trainer.ema run")
    parser.add_argument("--no-calibration", action="store_true",
                        help="ignore the run's calibration.json (the temperature analyze.py fitted)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of config and data errors")
    parser.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE", help="change a config value")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = command_line()
    args = parser.parse_intermixed_args(argv)
    if args.device:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.device

    paths = checkpoint_paths(args.resume)
    # An exported ONNX model runs with onnxruntime; its model card stands in for the checkpoint.
    checkpoints = [exported_checkpoint(path) if path.suffix == ".onnx" else load_checkpoint(path) for path in paths]
    raw_config = read_json(args.config) if args.config else checkpoints[0]["config"]
    modification = parse_overrides(args.overrides)
    if args.split:
        modification["inference.split"] = args.split
    if args.bs:
        modification["+data_loader.args.batch_size"] = args.bs
    config = ConfigParser(raw_config, modification=modification)
    if config["inference"]["split"] == "valid" and len(paths) > 1:
        raise ConfigError("--split valid", "scores the validation split of one run; the out-of-fold predictions "
                                           "of a k-fold run are in its oof_predictions.csv")
    output = Path(args.output or config["inference"]["output"]
                  or _default_output(Path(args.resume[0]), config["inference"]["split"], args.probabilities))
    check_output_path(output, "--output" if args.output else "inference.output")
    check_ensemble(config.config, checkpoints, paths)  # one task, one set of heads and classes
    # The results are also appended to the info.log of the run the (first) checkpoint belongs to.
    run_dir = Path(args.resume[0]) if Path(args.resume[0]).is_dir() else paths[0].parent
    setup_logging(run_dir if (run_dir / "info.log").is_file() else None, config["trainer"]["verbosity"])

    submission_table = submission_csv(config["inference"], args.probabilities)  # checked before predicting

    device, _ = prepare_device(config["n_gpu"])
    # Without -c or arch overrides, each checkpoint builds its own architecture: ensembles may mix them.
    own_arch = args.config is None and not any(key.lstrip("+").startswith("arch.") for key in modification)
    models = [OnnxModel(path) if path.suffix == ".onnx" else load_model(config, checkpoint, path, device, own_arch,
                                                                         use_ema=not args.no_ema)
              for checkpoint, path in zip(checkpoints, paths)]
    if not args.no_calibration:
        models = calibrated(models, config, args.resume, paths)
    loader = test_loader(config, config["inference"]["split"])
    dataset = loader.dataset.dataset if hasattr(loader.dataset, "indices") else loader.dataset
    task = config.task
    task.check_labels(dataset, config["arch"]["args"].get("num_classes"), "arch.args.num_classes")
    if Path(args.resume[0]).is_dir():
        task.load_run(Path(args.resume[0]))  # what k-fold tuned on its OOF predictions (thresholds)
    model_classes = checkpoints[0].get("classes")
    if dataset.targets and dataset.classes and model_classes and list(dataset.classes) != list(model_classes):
        raise DataError("dataset", f"its classes ({', '.join(dataset.classes[:5])}) are not the model's "
                                   f"({', '.join(model_classes[:5])}): the class indices would not match")
    logger.info("predicting %d samples (%s data) with %d checkpoint(s): %s", len(loader.dataset),
                config["inference"]["split"], len(paths), ", ".join(map(str, paths)))

    classes = model_classes or dataset.classes  # the names the model learned, also for unlabelled data
    predict_and_score(config, task, models, loader, dataset, output, classes, device, checkpoints[0].get("loss_args"),
                      probabilities_only=args.probabilities)
    if submission_table is not None:
        write_submission(submission_table, output, config["inference"]["submission"])


def _default_output(resume: Path, split: str = "test", probabilities: bool = False) -> Path:
    """predictions.csv beside the checkpoint; predictions_valid.csv for the validation split, so that
    scoring it never overwrites the test predictions; probabilities.csv for ``--probabilities``."""
    name = "probabilities.csv" if probabilities else "predictions_valid.csv" if split == "valid" else "predictions.csv"
    return (resume.parent if resume.is_file() else resume) / name


if __name__ == "__main__":
    run_cli(main)
