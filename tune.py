"""Hyperparameter search with Optuna: every trial is a run of train.py (or of kfold_train.py).

    python tune.py -c config.json --trials 30                    # the space is the config's "tune" section
    python tune.py -r saved/Digits_ResNet/20261127_101500        # continue a sweep, or join it as a worker
    python tune.py -c config.json --trials 30 --storage postgresql://user@host/optuna --study-name digits
    torchrun --nproc_per_node=2 tune.py -c config.json --trials 30

Writes ``<save_dir>/<name>/<run_id>/``: ``trial_<n>/`` (a run directory each), ``study.db``,
``tune_summary.csv``, ``best_config.json``, ``plots/`` and ``tensorboard/``.
"""
import json
import logging
from pathlib import Path

from config_parser import ConfigParser
from logger.logger import setup_logging
from train import build_trainer, check_one_batch
from utils import distributed as dist
from utils.checkpoint.files import fold_dirs, resume_candidates
from utils.cli import (
    CLI_OPTIONS,
    ArgumentParser,
    CliOption,
    add_config_arguments,
    on_stop_signals,
    overrides_of,
    run_cli,
)
from utils.config.components import section_module
from utils.config.schema import check_path_part
from utils.data.splits import describe_folds
from utils.data.workers import stop_workers
from utils.errors import ConfigError, NonFiniteLossError, TrainingInterrupted
from utils.recipe.param_groups import scaled_group_rates
from utils.seeding import configure_determinism, seed_everything
from utils.tune.report import write_hparams, write_results
from utils.tune.space import build_search_part, check_space, study_direction, suggest
from utils.tune.study import (
    Reporter,
    SurplusTrial,
    check_storage_target,
    counted_trials,
    fail_dead_workers,
    open_storage,
    open_study,
    quiet_optuna,
    retry_callback,
    worker_id,
)
from utils.tune.sweeps import start_sweep, sweep_lock
from utils.util import read_json

TUNE_OPTIONS = [*CLI_OPTIONS, CliOption(["--folds"], int, "kfold.n_splits", "number of folds (with --kfold)")]

logger = logging.getLogger("tune")


def command_line() -> ArgumentParser:
    parser = ArgumentParser(description="Hyperparameter search: one training run per trial, with Optuna.")
    parser.add_argument("-c", "--config", help="config file path, with a \"tune\" section")
    parser.add_argument("-r", "--resume", metavar="SWEEP_DIR", help="continue a sweep (or join it as a worker)")
    parser.add_argument("--trials", type=int, help="the number of trials of the study, in total over all workers")
    parser.add_argument("--storage", metavar="URL|JOURNAL_FILE",
                        help="an optuna storage URL or a journal file path (default: <sweep>/study.db)")
    parser.add_argument("--study-name", help="the study's name in the storage (default: <name>-<run id>)")
    parser.add_argument("--kfold", action="store_true", help="each trial is a k-fold run; the objective is the mean")
    parser.add_argument("--run-id", help="name of the sweep directory; an existing sweep is joined")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config, the space, the sampler and the pruner; write nothing")
    add_config_arguments(parser, TUNE_OPTIONS, "change a config value in every trial")
    return parser


class TrialRunner:
    """Turns a trial into a run directory ``<sweep>/trial_<n>/`` trained exactly as train.py trains it."""

    def __init__(self, config: ConfigParser, sweep_dir: Path, settings: dict):
        self.base, self.sweep_dir, self.settings = config.config, sweep_dir, settings
        self.space = self.base["tune"]["space"]
        self.monitor_key = self.base["trainer"]["monitor"].split()[1]
        self.resume_command = f"python tune.py -r {sweep_dir}"
        self.current_trial_id = None

    def objective(self, study):
        """Optuna's objective (rank 0): draw the parameters, hand them to every process, train."""
        def objective(trial) -> float:
            if len(counted_trials(study, before=trial.number)) >= self.settings["trials"]:
                trial.set_user_attr("surplus", True)
                study.stop()
                raise SurplusTrial(f"the study has its {self.settings['trials']} trials")
            trial.set_user_attr("worker", worker_id())
            self.current_trial_id = trial._trial_id
            modification = suggest(trial, self.space)
            # A retried trial inherits the user attributes of the trial it retries: its run directory too.
            retry_of = trial.user_attrs.get("first_number")
            run_dir = self.sweep_dir / f"trial_{trial.number if retry_of is None else retry_of}"
            config = ConfigParser(self.base, modification=modification).config
            trial.set_user_attr("first_number", trial.number if retry_of is None else retry_of)
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("config", config)
            resume = bool(fold_dirs(run_dir) if self.settings["kfold"] else resume_candidates(run_dir))
            logger.info("trial %d%s: %s", trial.number, f" (retry of trial {retry_of})" if retry_of is not None else "",
                        ", ".join(f"{key}={json.dumps(value)}" for key, value in modification.items()))
            spec = {"number": trial.number, "config": config, "run_dir": str(run_dir), "resume": resume}
            dist.broadcast_object(spec)
            return self.run(spec, trial)
        return objective

    def follow(self) -> None:
        """Ranks other than 0 under torchrun: run each trial rank 0 hands over, until it says stop."""
        import optuna

        while (spec := dist.broadcast_object(None)) is not None:
            try:
                self.run(spec, None)
            except optuna.TrialPruned:
                pass

    def run(self, spec: dict, trial) -> float:
        """Train one trial on every process; returns its best monitored value (the k-fold mean)."""
        reporter = Reporter(trial, self.monitor_key)
        run_dir = Path(spec["run_dir"])
        trainer = None
        try:
            if self.settings["kfold"]:
                return self._train_kfold(ConfigParser(spec["config"], run_dir=run_dir), reporter)
            config = ConfigParser(spec["config"], run_dir=run_dir, resume=run_dir if spec["resume"] else None)
            seed_everything(config["seed"])  # as train.py does: best_config.json reproduces the trial
            configure_determinism(config["deterministic"])
            trainer = build_trainer(config)
            check_one_batch(trainer)
            config.start_run()
            trainer.resume_command = self.resume_command
            trainer.epoch_callbacks.append(reporter.epoch_callback(trainer))
            trainer.train()
            if trial is not None:
                trial.set_user_attr("best_epoch", trainer.best_epoch)
            return trainer.monitor_best
        except NonFiniteLossError as error:
            reporter.stop(f"pruned: {error}")
        finally:
            if trainer is not None:  # the next trial starts workers of its own
                stop_workers(trainer.data_loader, trainer.valid_data_loader)
            setup_logging(self.sweep_dir, self.base["trainer"]["verbosity"], dist.is_main_process())

    def _train_kfold(self, config: ConfigParser, reporter: Reporter) -> float:
        """kfold_train.py's folds; the running mean of the folds' best values is reported after each fold."""
        from kfold_train import build_folds, check_same_folds, run_fold, summarize

        seed_everything(config["seed"])
        configure_determinism(config["deterministic"])
        train_dataset = config.init_obj("dataset", section_module("dataset"))
        folds, groups = build_folds(config, train_dataset)
        check_same_folds(config, folds)
        config.start_run()
        if groups is not None:
            logger.info(describe_folds(folds, groups, config["kfold"]["stratified"]))
        rows = []
        for fold, (_, held_out) in enumerate(folds):
            result_file = config.run_dir / f"fold_{fold}" / "fold_result.json"
            rows.append(json.loads(result_file.read_text()) if result_file.is_file()
                        else run_fold(config, fold, train_dataset, held_out))
            mean = sum(row[f"best_{self.monitor_key}"] for row in rows) / len(rows)
            setup_logging(config.run_dir, config["trainer"]["verbosity"], dist.is_main_process())
            reporter.report(fold, mean, mean, None, f"fold_{fold} ({fold + 1} of {len(folds)})")
        if dist.is_main_process():
            summarize(config, rows, train_dataset)
        return mean


def optimize(runner: TrialRunner, study, storage) -> None:
    """Run trials until the study has ``--trials`` of them; the results are rewritten after each one."""
    options, total = runner.base["tune"], runner.settings["trials"]
    fail_dead_workers(study, storage, options["max_retry"])

    def after_trial(study, trial) -> None:
        if trial.user_attrs.get("surplus"):
            return
        value = trial.value if trial.value is not None else trial.user_attrs.get("best_value")
        logger.info("trial %d %s: %s %s%s", trial.number, trial.state.name.lower(), runner.monitor_key,
                    f"{value:.6g}" if value is not None else "-", f" ({trial.user_attrs['note']})"
                    if "note" in trial.user_attrs else "")
        write_hparams(trial, runner.sweep_dir / "tensorboard", runner.monitor_key)
        fail_dead_workers(study, storage, options["max_retry"])
        write_results(study, runner.sweep_dir, options["plots"])
        if len(counted_trials(study)) >= total:
            study.stop()

    if len(counted_trials(study)) >= total:
        logger.info("the study %r already has its %d trials (give -r with --trials N for more)",
                    study.study_name, total)
    else:
        try:
            study.optimize(runner.objective(study), catch=(SurplusTrial,), callbacks=[after_trial])
        except TrainingInterrupted as stop:
            # The trial is failed; queue it again so that `-r` continues it from its checkpoint.
            stopped = storage.get_trial(runner.current_trial_id) if runner.current_trial_id is not None else None
            if stopped is not None and stopped.state.name == "FAIL":
                retry_callback(options["max_retry"])(study, stopped)
            write_results(study, runner.sweep_dir, options["plots"])
            raise TrainingInterrupted(stop.exit_code - 128, runner.resume_command) from None
    write_results(study, runner.sweep_dir, options["plots"], final=True)
    if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        logger.info("best: trial %d, %s %.6g; python train.py -c %s reproduces it", study.best_trial.number,
                    runner.monitor_key, study.best_value, runner.sweep_dir / "best_config.json")


def read_sweep_args(args) -> tuple[ConfigParser, Path | None, dict]:
    """(the checked base config, the sweep directory or None for a new one, the study's settings)."""
    modification = overrides_of(args, TUNE_OPTIONS)
    sweep_dir, settings = None, {}
    if args.resume:
        sweep_dir = Path(args.resume)
        if not (sweep_dir / "tune.json").is_file():
            raise ConfigError(str(sweep_dir), "is not a sweep directory of tune.py (it has no tune.json)")
        raw = read_json(args.config or sweep_dir / "config.json")
    elif args.config is None:
        raise ConfigError("command line", "give a config file with -c config.json, or a sweep to continue with -r")
    else:
        raw = read_json(args.config)
    if args.lr is not None:  # --lr keeps the ratios between the parameter groups, as in train.py
        modification = scaled_group_rates(raw, args.lr) | modification
    config = ConfigParser(raw, modification=modification)
    if sweep_dir is None and args.run_id is not None:
        check_path_part("--run-id", args.run_id)
        sweep_dir = config.runs_dir / args.run_id
        # A sweep's tune.json is written first: a folder with a config.json but none is a training run.
        if (sweep_dir / "config.json").is_file() and not (sweep_dir / "tune.json").is_file():
            raise ConfigError("--run-id", f"{sweep_dir} is a training run, not a sweep; choose another id")
    if sweep_dir is not None and (sweep_dir / "tune.json").is_file():
        settings = read_json(sweep_dir / "tune.json")
    given = {"storage": args.storage, "study_name": args.study_name, "trials": args.trials,
             "kfold": True if args.kfold else None}
    settings |= {key: value for key, value in given.items() if value is not None}
    if not isinstance(settings.get("trials"), int) or settings["trials"] < 1:
        raise ConfigError("--trials", "give the number of trials of the study, e.g. --trials 20")
    if settings.get("storage") and "://" not in settings["storage"]:
        settings["storage"] = str(Path(settings["storage"]).resolve())  # a journal file: valid from any folder
    return config, sweep_dir, settings



def main(argv: list[str] | None = None) -> None:
    args = command_line().parse_intermixed_args(argv)
    config, sweep_dir, settings = read_sweep_args(args)
    if settings.get("storage"):
        check_storage_target(settings["storage"])  # a bad URL or folder: before the dry run ends
    # Everything is checked before the first trial: the space, the direction, the sampler and the pruner.
    space = check_space(config.config)
    direction = study_direction(config.config)
    quiet_optuna()
    sampler, pruner = build_search_part(config.config, "sampler"), build_search_part(config.config, "pruner")
    if args.dry_run:
        print("\n".join(f"{path}: {json.dumps(spec)}" for path, spec in space.items()))
        print(f"{settings['trials']} trials to {direction} {config['trainer']['monitor'].split()[1]} with "
              f"{type(sampler).__name__} and {type(pruner).__name__}")
        print("dry run: the config and the search space are valid; nothing was written")
        return
    dist.init_distributed()
    storage = None
    if dist.is_main_process() and settings.get("storage"):
        storage = open_storage(settings["storage"], sweep_dir, config["tune"])  # a bad URL: before any folder
    sweep_dir, settings = start_sweep(config, sweep_dir, settings)
    setup_logging(sweep_dir, config["trainer"]["verbosity"], dist.is_main_process())
    runner = TrialRunner(config, sweep_dir, settings)
    with on_stop_signals(lambda signum: TrainingInterrupted(signum, runner.resume_command)):
        if not dist.is_main_process():
            runner.follow()
        else:
            with sweep_lock(sweep_dir):
                storage = storage or open_storage(None, sweep_dir, config["tune"])
                study = open_study(storage, settings["study_name"], direction, sampler, pruner)
            optimize(runner, study, storage)
            dist.broadcast_object(None)  # the other processes stop waiting for a trial
    dist.close_distributed()


if __name__ == "__main__":
    run_cli(main)
