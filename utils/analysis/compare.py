"""Runs compared: the config keys that differ, the final metrics side by side, the training curves,
and McNemar's test on the samples two runs both predicted (is B's accuracy better than noise?)."""
import json
import math
from pathlib import Path

import numpy as np

# McNemar's exact (binomial) test below this many discordant samples, the chi-square test above.
EXACT_BELOW = 25
_MISSING = "(absent)"


def flatten(config: dict, prefix: str = "") -> dict:
    """{"trainer.epochs": 3, "arch.args.widths": "[8, 16]", ...}: nested dicts as dotted keys, lists
    and other values as JSON text (so they compare and print as one cell).

    Examples:
        >>> flatten({"trainer": {"epochs": 3}, "metrics": ["accuracy"]})
        {'trainer.epochs': '3', 'metrics': '["accuracy"]'}
    """
    flat = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{path}.")
        else:
            flat[path] = json.dumps(value, sort_keys=True)
    return flat


def differing_keys(configs: dict[str, dict]):
    """The flattened config keys whose values are not the same in every run: key, then one column per run.

    Examples:
        >>> differing_keys({"a": {"seed": 1, "lr": 0.1}, "b": {"seed": 2, "lr": 0.1}})
           key  a  b
        0  seed 1  2
    """
    import pandas as pd

    flat = {name: flatten(config) for name, config in configs.items()}
    keys = sorted(set().union(*flat.values()))
    rows = [{"key": key} | {name: values.get(key, _MISSING) for name, values in flat.items()} for key in keys
            if len({values.get(key, _MISSING) for values in flat.values()}) > 1]
    return pd.DataFrame(rows, columns=["key", *configs])


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> dict:
    """McNemar's test of two classifiers on the same samples (booleans: each sample right or wrong).

    Only the discordant samples count: ``b`` = A right and B wrong, ``c`` = A wrong and B right. With
    fewer than 25 of them, the exact two-sided binomial test of b out of b + c at one half; from 25
    on, the chi-square test with continuity correction, (|b - c| - 1)^2 / (b + c) with one degree of
    freedom.

    Examples:
        >>> mcnemar(np.array([1, 1, 0, 1], bool), np.array([1, 0, 0, 0], bool))["p_value"]
        0.5
    """
    b = int(np.count_nonzero(a_correct & ~b_correct))
    c = int(np.count_nonzero(~a_correct & b_correct))
    n = b + c
    if n == 0:
        return {"a_only_correct": b, "b_only_correct": c, "test": "none (no discordant samples)", "statistic": 0.0,
                "p_value": 1.0}
    if n < EXACT_BELOW:
        tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
        return {"a_only_correct": b, "b_only_correct": c, "test": "exact binomial", "statistic": float(min(b, c)),
                "p_value": min(1.0, 2 * tail)}
    statistic = (abs(b - c) - 1) ** 2 / n
    # The chi-square survival function with one degree of freedom: erfc(sqrt(x / 2)).
    return {"a_only_correct": b, "b_only_correct": c, "test": "chi-square, continuity corrected",
            "statistic": statistic, "p_value": math.erfc(math.sqrt(statistic / 2))}


def paired_tests(runs: list) -> list[dict]:
    """McNemar's test of each run against the first, on the sample ids both predicted."""
    import pandas as pd

    first = runs[0]
    tests = []
    for other in runs[1:]:
        a = pd.Series(first.analysis["correct"] > 0, index=first.ids)
        b = pd.Series(other.analysis["correct"] > 0, index=other.ids)
        shared = a.index.intersection(b.index)
        if len(shared) == 0 or not (a.index.is_unique and b.index.is_unique):
            tests.append({"a": first.name, "b": other.name, "samples": 0, "test": "not run: no shared sample ids"})
            continue
        result = mcnemar(a[shared].to_numpy(), b[shared].to_numpy())
        tests.append({"a": first.name, "b": other.name, "samples": len(shared),
                      "accuracy_a": float(a[shared].mean()), "accuracy_b": float(b[shared].mean())} | result)
    return tests


def read_curves(paths: list[Path]):
    """The epochs of metrics.csv; several (k-fold's folds) are averaged per epoch."""
    import pandas as pd

    tables = [pd.read_csv(path) for path in paths if Path(path).is_file()]
    if not tables:
        return None
    numeric = pd.concat(tables).select_dtypes("number")
    return numeric.groupby("epoch", sort=True).mean().reset_index()


def final_metrics(runs: list):
    """One column per run: the analysis' metrics, then the last epoch of metrics.csv."""
    import pandas as pd

    columns = {}
    for run in runs:
        values = {}
        if "summary" in run.analysis:
            values |= dict(zip(run.analysis["summary"]["metric"], run.analysis["summary"]["value"]))
        if "calibration" in run.analysis:
            values["ece"] = run.analysis["calibration"]["ece_before"]
        curves = read_curves(run.curves)
        if curves is not None and len(curves):
            values |= {f"last_epoch.{key}": value for key, value in curves.iloc[-1].items() if key != "epoch_time"}
        columns[run.name] = values
    return pd.DataFrame(columns).rename_axis("metric").reset_index()
