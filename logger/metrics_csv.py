"""metrics.csv: the plain-text record of a run, one row per epoch."""
import csv
import os
from pathlib import Path


class MetricsCsv:
    """Append one row per epoch to ``metrics.csv``, flushed as each epoch ends.

    On resume, rows after the checkpoint's epoch (written before a crash) are dropped, so the file
    continues without a duplicate or a missing epoch.
    """

    def __init__(self, path: str | Path, resume_epoch: int | None = None):
        self.path = Path(path)
        self.columns = None
        if self.path.is_file():
            with open(self.path, newline="") as file:
                rows = list(csv.reader(file))
            if rows:
                self.columns = rows[0]
                keep = [r for r in rows[1:] if resume_epoch is not None and int(r[0]) <= resume_epoch]
                self._rewrite([self.columns, *keep])

    def _rewrite(self, rows: list[list[str]]) -> None:
        temp = self.path.with_name(self.path.name + ".tmp")
        with open(temp, "w", newline="") as file:
            csv.writer(file).writerows(rows)
        os.replace(temp, self.path)

    def write(self, log: dict) -> None:
        if self.columns is None:
            self.columns = list(log)
            self._rewrite([self.columns])
        elif set(log) - set(self.columns):  # a metric added on resume: a new column, empty before
            with open(self.path, newline="") as file:
                rows = list(csv.reader(file))[1:]
            added = [key for key in log if key not in self.columns]
            self.columns = self.columns + added
            self._rewrite([self.columns, *(row + [""] * len(added) for row in rows)])
        with open(self.path, "a", newline="") as file:
            csv.writer(file).writerow([log.get(column, "") for column in self.columns])
