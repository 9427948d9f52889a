"""The config: read from JSON, changed from the command line, checked, and turned into objects.

A section ``{"type": NAME, "args": {...}}`` builds ``NAME(**args)``, where NAME is looked up in the
section's module (see utils/config/components.py for the modules and the safety rules).
"""
import json
import logging
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from types import ModuleType

from logger.logger import LEVELS, setup_logging
from utils.checkpoint.resume import ResumePoint, compare_configs
from utils.checkpoint.runs import check_run_dir_free, check_writable, locate_resume, lock_run_dir, new_run_dir
from utils.cli import CLI_OPTIONS, ArgumentParser, CliOption, add_config_arguments, overrides_of
from utils.config import components
from utils.config import schema as config_schema
from utils.config.overrides import apply_modifications
from utils.errors import ConfigError
from utils.recipe.param_groups import scaled_group_rates
from utils.util import read_json, write_json


def training_arguments(description: str, resume_help: str, lr_find: bool = False) -> ArgumentParser:
    """The command line shared by train.py and kfold_train.py (with ``lr_find``, the range test's flags)."""
    parser = ArgumentParser(description=description)
    parser.add_argument("-c", "--config", help="config file path, e.g. config.json")
    parser.add_argument("-r", "--resume", metavar="PATH", help=resume_help)
    parser.add_argument("--finetune", metavar="CKPT",
                        help="start a new run from a checkpoint's model weights, with a fresh optimizer")
    parser.add_argument("--run-id", help="name of the run directory (default: a timestamp)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config, build everything, run one batch, write nothing")
    if lr_find:
        parser.add_argument("--lr-find", action="store_true", help="run the learning-rate range test, write "
                            "its curve to <save_dir>/<name>/lr_find/ and print the suggested rate; no training")
        parser.add_argument("--lr-min", type=float, default=1e-7, help="the range test's first rate (1e-7)")
        parser.add_argument("--lr-max", type=float, default=10.0, help="the range test's last rate (10)")
        parser.add_argument("--steps", type=int, default=100, help="the range test's optimizer steps (100)")
    add_config_arguments(parser, CLI_OPTIONS, "change a config value (VALUE is JSON, else a string); "
                                              "+KEY.PATH=VALUE adds one")
    return parser


class ConfigParser:
    """The resolved config of a run, and the factory of the objects it names.

    Creating one has no side effects: the run directory and its log file are created by
    ``start_run()``.

    Examples:
        >>> config = ConfigParser(read_json("config.json"), modification={"trainer.epochs": 3})
        >>> model = config.init_obj("arch", module_arch)    # = module_arch.ResNet(**config["arch"]["args"])
        >>> config["trainer"]["epochs"]
        3
    """

    def __init__(self, config: dict, resume: str | Path | None = None, modification: dict | None = None,
                 run_id: str | None = None, run_dir: str | Path | None = None,
                 finetune: str | Path | None = None, dry_run: bool = False):
        if modification:  # onto the defaults, so that an override can reach a key the file leaves out
            config = config_schema.with_defaults(config)
            apply_modifications(config, modification)
        self._config = config_schema.validate(config)  # once: every key, its type and range
        # Every type the config names, looked up once and its arguments checked; the task built once.
        self._types, self.task = components.check_all(self._config)
        self.resume = Path(resume) if resume else None
        self.finetune = Path(finetune) if finetune else None
        self.run_dir = Path(run_dir) if run_dir else None
        self.run_id = run_id
        self.dry_run = dry_run
        self._run_lock = None  # the open lock file of the run directory, from start_run()
        self._resume_point: ResumePoint | None = None
        self._unsaved_changes = False  # resume changes not yet in config.json (see record_resume)
        self.parent: ConfigParser | None = None  # a k-fold fold's: the k-fold run's config
        if run_id is not None:
            config_schema.check_path_part("--run-id", run_id)
        check_writable(Path(self["trainer"]["save_dir"]))
        if run_id is not None and self.run_dir is None and (self.runs_dir / run_id).exists():
            raise ConfigError("--run-id", f"{self.runs_dir / run_id} already exists; resume it with "
                                          f"-r {self.runs_dir / run_id}, or choose another id")

    @classmethod
    def from_args(cls, parser: ArgumentParser, options: Sequence[CliOption] = CLI_OPTIONS,
                  argv: list[str] | None = None, kfold: bool = False) -> "ConfigParser":
        """Build the config from the command line: -c, -r, -d, option flags and overrides.

        ``kfold`` tells what ``-r`` resumes: a k-fold run directory (kfold_train.py) or a run (train.py).
        """
        args = parser.parse_intermixed_args(argv)
        if getattr(args, "device", None):
            os.environ["CUDA_VISIBLE_DEVICES"] = args.device
        modification = overrides_of(args, options)
        resume = run_dir = point = None
        if getattr(args, "resume", None):
            resume, run_dir, config = locate_resume(args.resume, args.config, modification, kfold)
            point = None if config is not None else ResumePoint.read(resume)  # a file with no config.json beside it
            config = config if config is not None else point["config"]
            if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 holds the lock
                check_run_dir_free(run_dir)
        elif args.config is None:
            raise ConfigError("command line", "give a config file with -c config.json, or a run to resume with -r")
        else:
            config = read_json(args.config)
        if getattr(args, "lr", None) is not None:  # --lr keeps the ratios between the parameter groups
            modification = scaled_group_rates(config, args.lr) | modification
        if getattr(args, "finetune", None) and resume:
            raise ConfigError("command line", "use either -r (continue a run) or --finetune (start a new one)")
        parsed = cls(config, resume=resume, modification=modification, run_id=getattr(args, "run_id", None),
                     run_dir=run_dir, finetune=getattr(args, "finetune", None),
                     dry_run=getattr(args, "dry_run", False))
        parsed._resume_point = point
        if resume and kfold:  # a k-fold run: compared with its config.json (each fold with its checkpoint)
            saved = run_dir / "config.json"
            changes = compare_configs(read_json(saved), parsed.config) if saved.is_file() else {}
            if changes:
                parsed.record_resume(None, changes)
        elif point is not None:
            point.compare(parsed.config)
        return parsed

    def resume_point(self) -> ResumePoint | None:
        """The checkpoint ``-r`` continues from, read and verified once (None for a new run); its config
        compared with this one, so that a change resuming cannot honour stops here."""
        if self._resume_point is None and self.resume is not None:
            self._resume_point = ResumePoint.read(self.resume)
            self._resume_point.compare(self._config)
        return self._resume_point

    # -- the run directory ---------------------------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        """``<trainer.save_dir>/<name>``: where the runs of this config live."""
        return Path(self["trainer"]["save_dir"]) / self["name"]

    @property
    def save_dir(self) -> Path | None:
        """The run directory (checkpoints are saved there); None before ``start_run()``."""
        return self.run_dir

    @property
    def log_dir(self) -> Path | None:
        """The run directory (info.log, metrics.csv, tensorboard/ are written there)."""
        return self.run_dir

    def start_run(self) -> Path:
        """Create the run directory (or reopen the resumed one), save the config, start logging."""
        from utils.checkpoint.files import clean_temp_files
        from utils.distributed import broadcast_object, is_main_process

        problem = None
        if is_main_process():  # one holder of the lock per directory: rank 0
            try:
                if self.run_dir is None:
                    self.run_dir = new_run_dir(self.runs_dir, self.run_id)
                else:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                self._run_lock = lock_run_dir(self.run_dir)  # before anything in it is touched
                clean_temp_files(self.run_dir)
                if not self._unsaved_changes:  # else once a checkpoint holds them: see save_config
                    write_json(self._config, self.run_dir / "config.json")
            except OSError as error:
                problem = ConfigError("trainer.save_dir", f"cannot create the run directory: {error}")
            except ConfigError as error:
                problem = error
        # Every rank learns the directory, or the error: none is left waiting for the others.
        run_dir, problem = broadcast_object((str(self.run_dir), problem and (problem.where, problem.what)))
        if problem:
            raise ConfigError(*problem)
        self.run_dir = Path(run_dir)
        setup_logging(self.run_dir, self["trainer"]["verbosity"], is_main_process())
        return self.run_dir

    def record_resume(self, epoch: int | None, changes: dict) -> None:
        """Add the changes made on resuming at ``epoch`` to the config's ``resume_history``.

        config.json keeps the run's history: it is rewritten only by ``save_config()``, once the
        first checkpoint trained with the changes is on disk, so a resume that fails before that
        (a NaN loss, a crash) leaves the run as it was.
        """
        entry = {"epoch": epoch, "changes": changes} if epoch is not None else {"changes": changes}
        self._config["resume_history"] = [*self._config.get("resume_history", []), entry]
        self._unsaved_changes = True

    @property
    def unsaved_changes(self) -> bool:
        return self._unsaved_changes or (self.parent is not None and self.parent.unsaved_changes)

    def save_config(self) -> None:
        """Write config.json with the changes recorded since the run started (and the k-fold run's)."""
        if self._unsaved_changes and self.run_dir is not None:
            write_json(self._config, self.run_dir / "config.json")
            self._unsaved_changes = False
        if self.parent is not None:
            self.parent.save_config()

    # -- building objects ----------------------------------------------------------------------
    def lookup(self, name: str, module: ModuleType | None = None):
        """The class or function a section names (``"arch"``, ``"inference.dataset"``, ``"trainer"``),
        looked up in the section's module of ``utils.config.components.SECTION_MODULES``.

        ``module`` may be given, as in the original template (``config.init_obj("arch", module_arch)``),
        but it must be the section's own module: the table is the one place that says where names live.
        """
        parts = name.split(".")
        # "metrics.0" is a "metrics" entry; "inference.dataset" and "pseudo_labels.dataset" are datasets
        section = parts[1] if parts[0] in ("inference", "pseudo_labels") else parts[0]
        table_module = components.section_module(section)
        if module is not None and module is not table_module:
            raise ValueError(f"{name} is looked up in {table_module.__name__}, not {module.__name__}")
        if name in self._types:
            return self._types[name]
        spec = self.get(name)
        type_name = spec if isinstance(spec, str) else spec["type"]
        return components.lookup_type(table_module, type_name, name if isinstance(spec, str) else f"{name}.type")

    def init_obj(self, name: str, module: ModuleType | None = None, *args, **kwargs):
        """Build the object a section names, with its args; keyword arguments given here win.

        ``config.init_obj("optimizer", torch.optim, params)`` (or ``None`` for the module) is
        ``torch.optim.<type>(params, **config["optimizer"]["args"])``.
        """
        spec = self.get(name)
        obj = self.lookup(name, module)
        spec_args = {key: components.build_transform(value, f"{name}.args.{key}")
                     if components.is_transform_list(key, value) else value
                     for key, value in spec.get("args", {}).items()}
        return components.call(obj, name, *args, **(spec_args | kwargs))

    def init_ftn(self, name: str, module: ModuleType | None = None, *args, **kwargs):
        """A function a section names, with its args bound: ``partial(module.<type>, *args, **args)``.

        The section may be a bare name (``"loss": "cross_entropy"``). A class is built instead
        (an ``nn.Module`` loss) and the instance returned.
        """
        spec = self.get(name)
        obj = self.lookup(name, module)
        spec = {"type": spec} if isinstance(spec, str) else spec
        if isinstance(obj, type):
            return components.call(obj, name, *args, **(spec.get("args", {}) | kwargs))
        return partial(obj, *args, **(spec.get("args", {}) | kwargs))

    def init_data_loader(self, name: str, module: ModuleType | None = None, dataset=None, **kwargs):
        """Build the "dataset" section (unless a dataset is given), then the loader around it.

        ``config.init_data_loader("data_loader", module_data)`` is
        ``module_data.<type>(dataset, seed=config["seed"], **config["data_loader"]["args"])``.
        """
        if dataset is None:
            dataset = self.init_obj("dataset")
        loader_class = self.lookup(name, module)
        if "seed" in components.parameters(loader_class)[0]:
            kwargs.setdefault("seed", self["seed"])
        return self.init_obj(name, module, dataset, **kwargs)

    def init_metrics(self, module: ModuleType | None = None) -> dict:
        """The "metrics" list as {column name: metric function or Metric object}."""
        metrics = {}
        for i, (column, entry) in enumerate(zip(config_schema.metric_names(self._config), self["metrics"])):
            spec = {"type": entry} if isinstance(entry, str) else entry
            obj = self.lookup(f"metrics.{i}", module)
            args = spec.get("args", {})
            is_class = isinstance(obj, type)
            metrics[column] = components.call(obj, f"metrics.{i}", **args) if is_class else partial(obj, **args)
        return metrics

    def get_logger(self, name: str, verbosity: int | None = None) -> logging.Logger:
        verbosity = self["trainer"]["verbosity"] if verbosity is None else verbosity
        if verbosity not in LEVELS:
            raise ConfigError("verbosity", f"must be one of {sorted(LEVELS)}, got {verbosity!r}")
        logger = logging.getLogger(name)
        logger.setLevel(LEVELS[verbosity])
        return logger

    # -- reading values ------------------------------------------------------------------------
    def get(self, path: str):
        """A value by its dotted path, e.g. ``config.get("inference.dataset")``."""
        node = self._config
        for key in path.split("."):
            node = node[int(key)] if isinstance(node, list) else node[key]
        return node

    def __getitem__(self, name: str):
        return self._config[name]

    def __contains__(self, name: str) -> bool:
        return name in self._config and self._config[name] is not None

    @property
    def config(self) -> dict:
        return self._config

    def to_json(self) -> str:
        return json.dumps(self._config, indent=4)
