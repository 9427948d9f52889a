"""Targets read from a table's label column(s), shared by ImageDataset and TableDataset."""
from utils.errors import DataError


def read_labels(table, label_column: str | list[str], where: list[str]) -> tuple[list, list[str] | None]:
    """(targets, classes) from one label column or a list of them.

    - a list of columns: one list of values per sample (a head's class, a label's 0/1, or a
      regression output each); the classes are the column names;
    - a column of integers: class indices; of other numbers: regression values;
    - a column of text: class names (sorted to give the indices), or, when some row holds several
      space-separated tags, a multi-label 0/1 vector per sample with the sorted tags as classes.
    """
    import pandas as pd

    columns = label_column if isinstance(label_column, list) else [label_column]
    labels = table[columns]
    if labels.isna().to_numpy().any():
        row = int(labels.isna().any(axis=1).to_numpy().argmax())
        raise DataError(where[row], f"the label column {columns[int(labels.iloc[row].isna().to_numpy().argmax())]!r} "
                                    "is empty")
    if isinstance(label_column, list):
        return labels.to_numpy().tolist(), list(columns)
    labels = table[label_column]
    if pd.api.types.is_integer_dtype(labels):
        if (labels < 0).any():
            row = int((labels < 0).to_numpy().argmax())
            raise DataError(where[row], f"label {labels.iloc[row]} is negative")
        return labels.tolist(), None
    if pd.api.types.is_numeric_dtype(labels):
        return labels.astype(float).tolist(), None  # regression values
    numbers = pd.to_numeric(labels, errors="coerce")
    if numbers.notna().mean() >= 0.5:  # numbers with a few stray words: a broken numeric column
        row = int(numbers.isna().to_numpy().argmax())
        raise DataError(where[row], f"label {labels.iloc[row]!r} is not a number (the column holds numbers)")
    text = labels.astype(str).str.strip()
    if text.str.contains(r"\s").any():  # space-separated tags: multi-label
        tags = text.str.split()
        classes = sorted({tag for row in tags for tag in row})
        return [[int(name in set(row)) for name in classes] for row in tags], classes
    classes = sorted(text.unique())
    index_of = {name: i for i, name in enumerate(classes)}
    return [index_of[name] for name in text], classes
