"""The results of a study in its sweep directory, rewritten after every trial.

``tune_summary.csv`` (one row per trial, best first), ``best_config.json`` (the best trial's full
config, for ``python train.py -c best_config.json``), ``plots/*.png`` (optuna's matplotlib
visualisations) and ``tensorboard/`` (TensorBoard's HParams view over all trials).
"""
import logging
import os
import warnings
from pathlib import Path

from utils.util import write_json

logger = logging.getLogger(__name__)
STATE_ORDER = ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")
PLOTS = (("optimization_history", "plot_optimization_history", 1),
         ("param_importances", "plot_param_importances", 2),
         ("parallel_coordinate", "plot_parallel_coordinate", 2))


def write_atomically(path: Path, write) -> None:
    """Write through a temporary file and rename it: several workers may write the same file."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temp)
    os.replace(temp, path)


def summary_rows(study) -> list[dict]:
    """One dict per trial (surplus ones left out), best first."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    # A retry inherits the user attributes of the trial it retries, "first_number" among them.
    first = {t.number: t.user_attrs.get("first_number", t.number) for t in trials}
    retried_as = {first[t.number]: t.number for t in trials if first[t.number] != t.number}
    rows = []
    for t in trials:
        note = t.user_attrs.get("note", "") if t.state.name == "PRUNED" else ""
        if first[t.number] != t.number:
            note = f"retry of trial {first[t.number]}" + (f"; {note}" if note else "")
        elif t.number in retried_as:
            note = f"retried as trial {retried_as[t.number]}"
        end, start = t.datetime_complete, t.datetime_start
        rows.append({"number": t.number, "state": t.state.name,
                     "value": t.value if t.value is not None else t.user_attrs.get("best_value"),
                     "best_epoch": t.user_attrs.get("best_epoch"), **t.params,
                     "run_dir": t.user_attrs.get("run_dir"),
                     "seconds": round((end - start).total_seconds(), 3) if end and start else None,
                     "note": note})
    descending = study.direction.name == "MAXIMIZE"

    def rank(row):
        value = row["value"] if row["value"] is not None else float("inf") * (-1 if descending else 1)
        return STATE_ORDER.index(row["state"]), -value if descending else value, row["number"]
    return sorted(rows, key=rank)


def write_summary(study, sweep_dir: Path) -> None:
    """tune_summary.csv and best_config.json."""
    import pandas as pd

    rows = summary_rows(study)
    if rows:
        write_atomically(sweep_dir / "tune_summary.csv", lambda p: pd.DataFrame(rows).to_csv(p, index=False))
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if complete:
        write_atomically(sweep_dir / "best_config.json", lambda p: write_json(study.best_trial.user_attrs["config"], p))


def write_plots(study, plots_dir: Path) -> list[str]:
    """The optimisation history, parameter importances and parallel coordinates as PNG files.

    Returns the plots left out (too few finished trials, or a plot optuna cannot draw yet).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as optuna_plots

    finished = sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
    skipped = []
    plots_dir.mkdir(exist_ok=True)
    for name, function, minimum in PLOTS:
        if finished < minimum:
            skipped.append(f"{name} (needs {minimum} finished trials, there are {finished})")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # fANOVA's forest, smaller than its default of 64 trees: a few trials need no more.
                forest = {"evaluator": FanovaImportanceEvaluator(n_trees=16, seed=0)}
                extra = forest if name == "param_importances" else {}
                axes = getattr(optuna_plots, function)(study, **extra)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            write_atomically(plots_dir / f"{name}.png", lambda p, fig=figure: fig.savefig(p, format="png", dpi=100))
            plt.close(figure)
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            skipped.append(f"{name} ({str(error).strip().splitlines()[0] if str(error).strip() else error!r})")
    return skipped


def write_hparams(trial, tensorboard_dir: Path, monitor_key: str) -> None:
    """One HParams session for a finished or pruned trial in ``<sweep>/tensorboard/trial_<n>/``."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    value = trial.value if trial.value is not None else trial.user_attrs.get("best_value")
    if value is None:
        return
    metrics = {f"hparam/best_{monitor_key}": value, "hparam/pruned": float(trial.state.name == "PRUNED")}
    params = {name: value if isinstance(value, (int, float, str, bool)) else str(value)
              for name, value in trial.params.items()}
    with SummaryWriter(str(tensorboard_dir / f"trial_{trial.number}")) as writer:
        for summary in hparams(params, metrics):
            writer.file_writer.add_summary(summary)
        for tag, number in metrics.items():
            writer.add_scalar(tag, number)


def write_results(study, sweep_dir: Path, plots: bool = True, final: bool = False) -> None:
    """Everything above; the plots left out are logged as a warning at the end of the study."""
    write_summary(study, sweep_dir)
    skipped = write_plots(study, sweep_dir / "plots") if plots else []
    if skipped:
        (logger.warning if final else logger.debug)("plots left out: %s", "; ".join(skipped))
