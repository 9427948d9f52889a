"""A table of numeric features in a CSV file: the tabular dataset for every task."""
import torch

from base.base_dataset import BaseDataset
from dataset.labels import read_labels
from utils.errors import DataError


class TableDataset(BaseDataset):
    """Rows of a CSV file: the numeric feature columns are the sample, the label column(s) the target.

    Args:
        csv_file: the training table.
        test_csv_file: the table ``train: false`` reads (inference); its label columns may be missing.
        label_column: one column or a list of columns (see ``dataset.labels.read_labels``: class
            indices or names, numbers for regression, space-separated tags for multi-label, a list
            for multi-head, 0/1 labels or several regression outputs).
        feature_columns: the feature columns (default: every other column except ``id_column``).
        id_column: a column that identifies a row in predictions.csv (default: the row index).
        standardize: scale each feature to mean 0 and standard deviation 1, with the training
            table's statistics.
        train: the training table, or the test table.

    Examples:
        >>> "dataset": {"type": "TableDataset", "args": {"csv_file": "data/train.csv", "label_column": "price"}}
    """

    def __init__(self, csv_file: str, test_csv_file: str | None = None, label_column: str | list[str] = "label",
                 feature_columns: list[str] | None = None, id_column: str | None = None, standardize: bool = True,
                 train: bool = True, train_transform=None, eval_transform=None):
        super().__init__(train_transform, eval_transform)
        import pandas as pd

        if not train and test_csv_file is None:
            raise DataError("dataset.args.test_csv_file", "is needed to read the test table (train: false)")
        training = _read(csv_file)
        table = training if train else _read(test_csv_file)
        path = csv_file if train else test_csv_file
        label_columns = label_column if isinstance(label_column, list) else [label_column]
        features = feature_columns or [c for c in training.columns if c not in (*label_columns, id_column)]
        for column in (*features, *([id_column] if id_column else []), *(label_columns if train else [])):
            if column not in table.columns:
                raise DataError(str(path), f"no column {column!r}; its columns are {list(table.columns)}")
        values = table[features].apply(pd.to_numeric, errors="coerce")
        if values.isna().to_numpy().any():
            row, column = next((r, c) for r, c in zip(*values.isna().to_numpy().nonzero()))
            raise DataError(f"{path}, line {row + 2}", f"feature {features[column]!r} is not a number: "
                                                       f"{table[features[column]].iloc[row]!r}")
        self.features = torch.tensor(values.to_numpy(), dtype=torch.float32)
        if standardize:
            reference = torch.tensor(training[features].to_numpy(dtype=float), dtype=torch.float32)
            self.features = (self.features - reference.mean(0)) / reference.std(0).clamp_min(1e-8)
        self.ids = table[id_column].tolist() if id_column else None
        where = [f"{path}, line {row + 2}" for row in range(len(table))]
        if all(column in table.columns for column in label_columns):
            self.targets, self.classes = read_labels(table, label_column, where)
        self.augment = train

    def __len__(self) -> int:
        return len(self.features)

    def sample_id(self, index: int):
        return self.ids[index] if self.ids is not None else index

    def load(self, index: int):
        return self.features[index], self.targets[index] if self.targets is not None else -1


def _read(csv_file: str):
    import pandas as pd

    try:
        return pd.read_csv(csv_file)
    except FileNotFoundError:
        raise DataError(str(csv_file), "CSV file not found") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(str(csv_file), f"cannot read the table: {str(error).splitlines()[0]}") from None
