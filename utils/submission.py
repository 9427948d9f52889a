"""A competition's submission file: a copy of its CSV with the answer column filled from the predictions.

    "inference": {"submission": {"csv": "eval/info.csv", "id_column": "ImageID", "column": "ans"}}

The rows stay as the competition's CSV has them, in its order. Each row's id names an image file: it is
matched with the file name of a prediction's ``id`` (or, for ids without an extension, its stem).
An id with no predicted image, or a predicted image no row names, is an error that names it.
"""
import logging
from pathlib import Path

from utils.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def match_rows(ids: list[str], files: list[str], csv_file: str) -> list[int]:
    """For each row id, the position of its file among ``files`` (prediction ids: paths).

    Examples:
        >>> match_rows(["b.png", "a"], ["test/a.png", "test/b.png"], "info.csv")
        [1, 0]
    """
    by_name, by_stem = {}, {}
    for position, file in enumerate(files):
        path = Path(file)
        for table, key in ((by_name, path.name), (by_stem, path.stem)):
            if key in table and table is by_name:
                raise DataError(file, f"has the same file name as {files[table[key]]}: the rows of {csv_file} "
                                      "cannot tell them apart")
            table.setdefault(key, position)
    rows, used = [], set()
    for line, row_id in enumerate(ids):
        position = by_name.get(row_id, by_stem.get(row_id) if not Path(row_id).suffix else None)
        if position is None:
            raise DataError(f"{csv_file}, line {line + 2}", f"no image {row_id!r} among the {len(files)} predicted "
                                                           "files (the inference data)")
        if position in used:
            raise DataError(f"{csv_file}, line {line + 2}", f"{row_id!r} names an image an earlier row names")
        used.add(position)
        rows.append(position)
    extra = sorted(set(range(len(files))) - used)
    if extra:
        raise DataError(files[extra[0]], f"is predicted but no row of {csv_file} names it "
                                         f"({len(extra)} such image(s))")
    return rows


def read_submission_csv(options: dict):
    """The competition's CSV as a table of strings, checked before anything is predicted."""
    import pandas as pd

    csv_file = options["csv"]
    if not Path(csv_file).is_file():
        raise DataError(csv_file, "the submission CSV (inference.submission.csv) is not found")
    table = pd.read_csv(csv_file, dtype=str, keep_default_na=False)
    if options["id_column"] not in table.columns:
        raise ConfigError("inference.submission.id_column", f"{options['id_column']!r} is not a column of "
                                                            f"{csv_file} (its columns: {', '.join(table.columns)})")
    return table


def submission_csv(inference: dict, probabilities: bool = False):
    """The competition's CSV the config's ``inference.submission`` names (``read_submission_csv``), or None
    without one, for the validation split (a warning) or for ``--probabilities``."""
    if inference["submission"] is None or probabilities:
        return None
    if inference["split"] == "valid":
        logger.warning("inference.submission: not written for predictions of the validation split")
        return None
    return read_submission_csv(inference["submission"])


def write_submission(table, predictions_file: Path, options: dict) -> Path:
    """Write a copy of ``table`` (``read_submission_csv``) with ``options["column"]`` filled from the
    predictions file's ``options["prediction_column"]`` (MultiHead's ``prediction`` is the combined class),
    to ``options["output"]`` or ``submission.csv`` beside the predictions; written whole or not at all.

    Examples:
        >>> options = {"csv": "eval/info.csv", "id_column": "ImageID", "column": "ans",
        ...            "prediction_column": "prediction", "output": None}
        >>> write_submission(read_submission_csv(options), Path("predictions.csv"), options)
    """
    import pandas as pd

    predictions = pd.read_csv(predictions_file)
    source = options["prediction_column"]
    if source not in predictions.columns:
        raise ConfigError("inference.submission.prediction_column",
                          f"{source!r} is not a column of the predictions (they have {', '.join(predictions.columns)})")
    rows = match_rows(table[options["id_column"]].tolist(), predictions["id"].astype(str).tolist(), options["csv"])
    submission = table.copy()
    submission[options["column"]] = predictions[source].to_numpy()[rows]
    output = Path(options["output"] or Path(predictions_file).with_name("submission.csv"))
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.with_name(output.name + ".tmp")
    submission.to_csv(temp, index=False)
    temp.replace(output)
    logger.info("wrote %s: %s filled in for its %d rows", output, options["column"], len(submission))
    return output
