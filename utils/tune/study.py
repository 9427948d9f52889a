"""The study behind tune.py: its storage, which trials count, retries after a crash, and pruning.

Optuna does the searching; this module connects it to run directories: a trial killed with its
worker is failed (by optuna's heartbeat, or at once when the worker ran on this machine) and queued
again with the same parameters, and the retry continues in the killed trial's run directory.
"""
import inspect
import logging
import os
import socket
import time
import warnings
from pathlib import Path

from utils import distributed as dist
from utils.config.fields import did_you_mean
from utils.errors import ConfigError

logger = logging.getLogger(__name__)


class SurplusTrial(Exception):
    """Two workers asked for the last trial at once: the later one is dropped (and not counted)."""


def quiet_optuna() -> None:
    """Optuna's own log lines and experimental-API warnings are left out: tune.py logs each trial itself."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def retry_callback(max_retry: int):
    """Optuna's callback that queues a failed trial again with the same parameters (and its reports)."""
    import optuna.storages

    # Renamed in optuna 4.9; the old name still works in older versions.
    retry_class = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
        or optuna.storages.RetryFailedTrialCallback
    return retry_class(max_retry=max_retry, inherit_intermediate_values=True)


def check_storage_target(target: str) -> None:
    """A ``--storage`` is a database URL optuna can open, or a journal file in a folder that exists;
    checked before the first trial (and by ``--dry-run``), without connecting.

    Examples:
        >>> check_storage_target("postgres://db/optuna")  # ConfigError: --storage: ... did you mean 'postgresql'?
    """
    if "://" not in target:
        if not Path(target).parent.is_dir():
            raise ConfigError("--storage", f"{Path(target).parent} is not a folder (a journal file's folder must "
                                           "exist)")
        return
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        url = make_url(target)
        url.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:  # (an ArgumentError too)
        kinds = ("sqlite", "postgresql", "mysql")
        raise ConfigError("--storage", f"{target}: unknown database kind {url.drivername!r}"
                                       f"{did_you_mean(url.get_backend_name(), kinds)}; optuna takes e.g. "
                                       "sqlite:///study.db, postgresql://user@host/db, mysql://user@host/db") from None
    except sqlalchemy.exc.ArgumentError as error:
        raise ConfigError("--storage", f"{target} is not a database URL: {error}") from None
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ConfigError("--storage", f"{target} is an in-memory database, which no other worker sees and "
                                           "which is lost at the end: give a file, e.g. sqlite:///sweep/study.db")
        if not Path(url.database).absolute().parent.is_dir():
            raise ConfigError("--storage", f"{Path(url.database).parent} is not a folder (the SQLite file's folder "
                                           "must exist)")


def open_storage(target: str | None, sweep_dir: Path, options: dict):
    """The study's storage: ``<sweep>/study.db`` (SQLite) by default, an optuna URL, or a journal file.

    Database storages get optuna's heartbeat: a trial whose worker stops beating for
    ``grace_period`` seconds is failed and queued again.

    Examples:
        >>> open_storage("postgresql://user@db-host/optuna", sweep_dir, config["tune"])
        >>> open_storage("/shared/study.journal", sweep_dir, config["tune"])   # JournalStorage
    """
    import optuna.storages
    import sqlalchemy.exc

    if target is not None and "://" not in target:
        from optuna.storages.journal import JournalFileBackend

        path = Path(target)
        if not path.parent.is_dir():
            raise ConfigError("--storage", f"{path.parent} is not a folder (a journal file's folder must exist)")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    url = target or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]  # psycopg 3, from requirements.txt
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    # The callback's keyword was renamed in optuna 4.9.
    renamed = "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
    callback = {"heartbeat_stale_trial_callback" if renamed else "failed_trial_callback":
                retry_callback(options["max_retry"])}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, grace_period=options["grace_period"],
                                              heartbeat_interval=options["heartbeat_interval"], **callback)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if attempt < 4 and any(word in message for word in ("already exists", "duplicate key", "locked")):
                time.sleep(0.5 * (attempt + 1))  # another worker is creating the tables at this moment
                continue
            raise ConfigError("--storage", f"cannot open {url}: {message}") from None


def open_study(storage, study_name: str, direction: str, sampler, pruner):
    """Create the study, or join it when it exists (another worker, or ``-r``)."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=study_name, direction=direction, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError("trainer.monitor", f"the study {study_name!r} maximizes or minimizes the other way "
                                             f"({study.direction.name.lower()}); use another --study-name")
    return study


def counted_trials(study, before: int | None = None) -> list:
    """The trials that count towards ``--trials``: finished, pruned, running or queued ones
    (numbered below ``before``). Failed trials do not count: they are retried or were errors."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    trials = study.get_trials(deepcopy=False, states=states)
    return [t for t in trials if before is None or t.number < before]


def worker_id() -> str:
    """``host:pid`` of this worker, kept with each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_dead_workers(study, storage, max_retry: int) -> None:
    """Fail (and queue again) the running trials of workers of this machine that no longer exist.

    The heartbeat finds them too, on any machine, but only after its grace period, and a journal
    file has no heartbeat.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or _process_exists(int(pid)):
            continue
        try:
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another worker failed it first
        logger.warning("trial %d: its worker (process %s) is gone; queueing it again", trial.number, pid)
        retry_callback(max_retry)(study, storage.get_trial(trial._trial_id))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Reporter:
    """Reports a trial's monitored value to optuna after each epoch (or fold) and stops a pruned trial.

    Under torchrun only rank 0 holds the optuna trial: it asks the pruner and every process follows.

    Examples:
        >>> trainer.epoch_callbacks.append(Reporter(trial, "val_loss").epoch_callback(trainer))
    """

    def __init__(self, trial, monitor_key: str):
        self.trial, self.monitor_key = trial, monitor_key

    def epoch_callback(self, trainer):
        def after_epoch(epoch: int, log: dict) -> None:
            self.report(epoch, log[self.monitor_key], trainer.monitor_best, trainer.best_epoch, f"epoch {epoch}")
        return after_epoch

    def report(self, step: int, value: float, best: float, best_epoch: int | None, what: str) -> None:
        """Report ``value`` at ``step``; raise optuna.TrialPruned when the pruner says so."""

        prune = False
        if self.trial is not None:
            self.trial.set_user_attr("best_value", best)
            self.trial.set_user_attr("best_epoch", best_epoch)
            self.trial.report(value, step)
            prune = self.trial.should_prune()
        if dist.broadcast_object(prune):
            self.stop(f"pruned after {what}: {self.monitor_key} {value:.6g} is worse than the pruner allows")

    def stop(self, note: str) -> None:
        """End the trial as pruned, saying why in its log and in the study."""
        import optuna

        logger.info("trial %s %s", self.trial.number if self.trial is not None else "", note)
        if self.trial is not None:
            self.trial.set_user_attr("note", note)
        raise optuna.TrialPruned(note)
