"""``write_report``: the page of one or more analysed RUNs and, for several, their comparison."""
from pathlib import Path

from logger.report import figures
from logger.report.page import Page, classification_section, slug


def regression_section(page: Page, analysis: dict, folder: Path) -> None:
    page.table(analysis["summary"], folder / "summary.csv", "Summary (95% bootstrap interval of the MAE)")
    target, residual = analysis["residuals"]
    page.heading("Residuals against the target", 3)
    page.image(figures.residuals_picture(target, residual, folder / "residuals.png"), "residuals")
    page.table(analysis["per_target_bin"], folder / "per_target_bin.csv", "Error per target bin (quantiles)")
    page.table(analysis["worst_residuals"], folder / "worst_residuals.csv", "Worst residuals")


def multilabel_section(page: Page, analysis: dict, folder: Path) -> None:
    page.table(analysis["summary"], folder / "summary.csv", "Summary")
    page.table(analysis["per_label"], folder / "per_label.csv", "Per label, worst F1 first (at the thresholds in use)")


def multihead_section(page: Page, run, analysis: dict, folder: Path) -> None:
    page.table(analysis["combined_summary"], folder / "combined_summary.csv",
               "Combined (every head right), 95% bootstrap interval")
    for head, head_analysis in analysis["heads"].items():
        page.heading(f"Head {head}", 3)
        run.classes = [str(k) for k in range(len(head_analysis["confusion"]))]
        classification_section(page, run, folder / slug(head), head_analysis)


def comparison_section(page: Page, comparison: dict, folder: Path) -> None:
    """Config keys that differ, final metrics, curves overlaid, paired tests."""
    import pandas as pd

    from utils.analysis.compare import EXACT_BELOW, read_curves

    page.heading("Runs compared")
    if "config" in comparison:
        page.table(comparison["config"], folder / "config_differences.csv",
                   f"Config keys that differ ({len(comparison['config'])})", rows=200)
    page.table(comparison["metrics"], folder / "final_metrics.csv", "Metrics side by side", rows=200)
    curves = {name: read_curves(paths) for name, paths in comparison["curves"].items()}
    picture = figures.curves_picture(curves, folder / "curves.png")
    if picture is not None:
        page.heading("Training curves (k-fold: the mean over folds)", 3)
        page.image(picture, "training curves")
    if comparison.get("paired"):
        page.table(pd.DataFrame(comparison["paired"]), folder / "paired_tests.csv",
                   "Paired test of correctness on the shared samples (McNemar)")
        page.text(f"McNemar's test counts the samples one run gets right and the other wrong; with fewer than "
                  f"{EXACT_BELOW} of them the exact binomial test, else the chi-square test with continuity "
                  "correction. p below 0.05: the difference in accuracy is unlikely to be noise.", "note")


def write_report(runs: list, comparison: dict | None, out: str | Path) -> Path:
    """Write ``out/index.html``, its pictures and CSVs for analysed RUNs (``run.analysis`` filled).

    Examples:
        >>> write_report([predictions], None, "saved/Digits/20261127_120000/report")
    """
    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    page = Page(out)
    if comparison is not None:
        comparison_section(page, comparison, out / "compare")
    for run in runs:
        folder = out / slug(run.name)
        folder.mkdir(parents=True, exist_ok=True)
        page.heading(f"{run.name}: {run.kind}")
        page.text(f"{len(run.table)} predictions from {run.source}", "note")
        summary = run.run_dir / "kfold_summary.csv" if run.run_dir is not None else None
        if summary is not None and summary.is_file():
            page.table(pd.read_csv(summary), folder / "kfold_summary.csv", "k-fold summary (each fold's best epoch)")
        if run.kind == "classification":
            classification_section(page, run, folder, run.analysis)
        elif run.kind == "regression":
            regression_section(page, run.analysis, folder)
        elif run.kind == "multilabel":
            multilabel_section(page, run.analysis, folder)
        else:
            multihead_section(page, run, run.analysis, folder)
    title = "Analysis of " + ", ".join(run.name for run in runs)
    return page.write(title)
