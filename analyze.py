"""See why a model fails: one offline page from validation or out-of-fold predictions.

    python analyze.py saved/Digits_ResNet/20261127_101500                 # a run: its validation split
    python analyze.py saved/Digits_ResNet/20261127_120000 --top 50        # k-fold: the OOF predictions
    python analyze.py predictions.csv                                     # any predictions with labels
    python analyze.py saved/Digits_ResNet/run_a saved/Digits_ResNet/run_b --out compare_report

Writes ``report/index.html`` (in the first RUN's directory unless ``--out``) with its pictures and the
tables as CSV. For classification it also fits a temperature and saves it with the run as
``calibration.json``, which inference.py then applies.
"""
import logging
from pathlib import Path

from utils.cli import ArgumentParser, run_cli
from utils.errors import ConfigError

logger = logging.getLogger("analyze")


def command_line() -> ArgumentParser:
    parser = ArgumentParser(description="Analyse a model's mistakes and calibration; compare runs.")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="a training run directory, a k-fold run directory or a predictions CSV with labels")
    parser.add_argument("--out", help="the report folder (default: report/ in the first RUN's directory)")
    parser.add_argument("--top", type=int, default=25, help="how many highest-loss samples to show (default 25)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of config and data errors")
    return parser


def predict_validation(run_dir: Path, out: Path) -> Path:
    """The validation split of a training run, predicted by inference.py with the run's best checkpoint
    (EMA weights where the run kept them), without a temperature: the analysis fits one."""
    import inference
    from logger.logger import setup_logging

    output = out / "predictions" / f"{run_dir.resolve().parent.name}_{run_dir.name}_valid.csv"
    inference.main(["--resume", str(run_dir), "--split", "valid", "--output", str(output), "--no-calibration"])
    setup_logging(None, 1)  # inference logged into the run's info.log; the analysis logs to the console
    return output


def default_out(first: Path) -> Path:
    return (first if first.is_dir() else first.parent) / "report"


def main(argv: list[str] | None = None) -> None:
    from logger.logger import setup_logging
    from logger.report.report import write_report
    from utils.analysis.engine import analyze_predictions, compare_runs
    from utils.analysis.sources import load_source

    args = command_line().parse_intermixed_args(argv)
    if args.top < 0:
        raise ConfigError("--top", f"must be 0 or more, got {args.top}")
    setup_logging(None, 1)
    out = Path(args.out) if args.out else default_out(Path(args.runs[0]))
    runs = []
    for target in args.runs:
        run = load_source(target, lambda run_dir: predict_validation(run_dir, out), progress=not args.no_progress)
        logger.info("%s: %d %s predictions", run.name, len(run.table), run.kind)
        analyze_predictions(run, args.top, progress=not args.no_progress)
        runs.append(run)
    names = [run.name for run in runs]
    for i, run in enumerate(runs):
        if names.count(run.name) > 1:
            run.name = f"{i + 1}:{run.name}"  # the same CSV name twice
    comparison = compare_runs(runs) if len(runs) > 1 else None
    page = write_report(runs, comparison, out)
    logger.info("wrote %s", page)


if __name__ == "__main__":
    run_cli(main)
