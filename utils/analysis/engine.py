"""One call per RUN: the analysis that fits its task, and the calibration saved with the run."""
import logging

from utils.analysis.calibration import calibrate, save_calibration
from utils.analysis.classification import analyze_classification
from utils.analysis.compare import differing_keys, final_metrics, paired_tests
from utils.analysis.tasks import analyze_multihead, analyze_multilabel, analyze_regression, multilabel_thresholds

logger = logging.getLogger(__name__)


def analyze_predictions(predictions, top: int = 25, progress: bool = False) -> dict:
    """Fill ``predictions.analysis`` with the tables of its task; for classification also fit a
    temperature and, for a training or k-fold run, save it as the run's calibration.json.

    Examples:
        >>> analysis = analyze_predictions(read_predictions("oof_predictions.csv"), top=25)
        >>> analysis["per_class"].head()
    """
    if predictions.kind == "classification":
        analysis = analyze_classification(predictions, top, progress)
        analysis["calibration"] = calibrate(predictions.probs, predictions.targets)
        if predictions.run_dir is not None:
            path = save_calibration(predictions.run_dir, analysis["calibration"], predictions.fitted_on)
            analysis["calibration"]["saved"] = path
            logger.info("temperature %.4g fitted on the %s: saved to %s", analysis["calibration"]["temperature"],
                        predictions.fitted_on, path)
    elif predictions.kind == "regression":
        analysis = analyze_regression(predictions, top)
    elif predictions.kind == "multilabel":
        analysis = analyze_multilabel(predictions, multilabel_thresholds(predictions))
    else:
        analysis = analyze_multihead(predictions, top, progress)
    predictions.analysis = analysis
    return analysis


def compare_runs(runs: list) -> dict:
    """With two or more RUNs: the differing config keys, the final metrics, and paired tests."""
    configs = {run.name: run.config for run in runs if run.config is not None}
    comparison = {"metrics": final_metrics(runs), "curves": {run.name: run.curves for run in runs}}
    if len(configs) >= 2:
        comparison["config"] = differing_keys(configs)
    if all("correct" in run.analysis for run in runs):
        comparison["paired"] = paired_tests(runs)
    return comparison
