"""The analysis page: ``<out>/index.html`` (one page, no scripts, nothing fetched from the network),
its pictures beside it, and every table as a CSV (the page shows the first rows of the long ones)."""
import html
import re
from pathlib import Path

import numpy as np

from logger.report import figures

SHOWN_ROWS = 30
STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}h3{margin-bottom:.3em}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}td,th{border:1px solid #ddd;padding:2px 6px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.gallery figure{margin:0;width:120px;font-size:.75em}
.gallery img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#eee}
.note{color:#555;font-size:.9em}"""


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


class Page:
    """The HTML of the page, built section by section; tables are written as CSV beside it."""

    def __init__(self, out: Path):
        self.out, self.parts = Path(out), []

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, css: str = "") -> None:
        self.parts.append(f'<p class="{css}">{html.escape(text)}</p>' if css else f"<p>{html.escape(text)}</p>")

    def image(self, path: Path | None, alt: str) -> None:
        if path is not None:
            relative = Path(path).relative_to(self.out).as_posix()
            self.parts.append(f'<p><img src="{html.escape(relative)}" alt="{html.escape(alt)}"></p>')

    def table(self, frame, csv_path: Path, title: str | None = None, rows: int = SHOWN_ROWS) -> None:
        """Write ``frame`` to ``csv_path`` and show its first ``rows`` rows with a link to the CSV."""
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(csv_path, index=False)
        if title:
            self.heading(title, 3)
        shown = frame.head(rows).to_html(index=False, border=0, float_format="{:.4g}".format, na_rep="")
        self.parts.append(shown)
        more = f"first {rows} of {len(frame)} rows; " if len(frame) > rows else ""
        link = html.escape(csv_path.relative_to(self.out).as_posix())
        self.parts.append(f'<p class="note">{more}all of them in <a href="{link}">{link}</a></p>')

    def write(self, title: str) -> Path:
        body = "\n".join(self.parts)
        page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f'<link rel="icon" href="data:,"><style>{STYLE}</style></head>\n<body>\n'
                f"<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")
        path = self.out / "index.html"
        path.write_text(page, encoding="utf-8")
        return path


def classification_section(page: Page, run, folder: Path, analysis: dict) -> None:
    """Summary, per class, confusion, worst samples, calibration, folds and groups of one classifier."""
    import pandas as pd

    page.table(analysis["summary"], folder / "summary.csv", "Summary (95% bootstrap intervals, 1000 resamples)")
    if "folds" in analysis:
        folds = analysis["folds"].assign(accuracy=lambda t: 1 - t["error_rate"])
        page.table(folds, folder / "folds.csv", "Per fold")
        page.text(f"accuracy across folds: mean {folds['accuracy'].mean():.4f}, standard deviation "
                  f"{folds['accuracy'].std():.4f}", "note")
    page.table(analysis["per_class"], folder / "per_class.csv", "Per class, worst F1 first")
    confusion, classes = analysis["confusion"], run.classes
    picture, drawn = figures.confusion_picture(confusion, classes, folder / "confusion.png")
    page.heading("Confusion matrix", 3)
    if drawn < len(classes):
        page.text(f"the {drawn} classes with the most mistakes of {len(classes)}; the CSVs have all", "note")
    page.image(picture, "confusion matrix, row-normalized")
    pd.DataFrame(confusion, index=classes, columns=classes).rename_axis("true").to_csv(folder / "confusion_counts.csv")
    normalized = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    pd.DataFrame(normalized, index=classes, columns=classes).rename_axis("true").to_csv(
        folder / "confusion_normalized.csv", float_format="%.4g")
    page.table(analysis["confused_pairs"], folder / "confused_pairs.csv", "Most confused pairs")
    worst_section(page, analysis["worst"], folder)
    if "calibration" in analysis:
        calibration_section(page, analysis["calibration"], folder)
    if "groups" in analysis:
        page.table(analysis["groups"], folder / "groups.csv", "Groups, highest error rate first")


def worst_section(page: Page, worst, folder: Path) -> None:
    """The highest-loss samples: a gallery of thumbnails when the ids are image files, and the table."""
    thumbs = folder / "thumbnails"
    thumbs.mkdir(parents=True, exist_ok=True)
    names = [figures.thumbnail(sample_id, thumbs, i) for i, sample_id in enumerate(worst["id"])]
    page.heading(f"The {len(worst)} samples with the highest loss", 3)
    if any(names):
        cells = []
        for name, row in zip(names, worst.itertuples()):
            image = (f'<img src="{html.escape((thumbs / name).relative_to(page.out).as_posix())}" alt="sample">'
                     if name else "")
            cells.append(f"<figure>{image}<figcaption>true {html.escape(str(row.true))}, predicted "
                         f"{html.escape(str(row.predicted))} ({row.p_predicted:.2f})<br>"
                         f"{html.escape(Path(str(row.id)).name)}</figcaption></figure>")
        page.parts.append('<div class="gallery">' + "".join(cells) + "</div>")
    else:
        thumbs.rmdir()
    page.table(worst.drop(columns="row"), folder / "worst_samples.csv")


def calibration_section(page: Page, calibration: dict, folder: Path) -> None:
    import pandas as pd

    page.heading("Calibration", 3)
    saved = calibration.get("saved")
    page.text(f"expected calibration error (15 equal-width bins) {calibration['ece_before']:.4f}, after temperature "
              f"scaling {calibration['ece_after']:.4f}; negative log-likelihood {calibration['nll_before']:.4f}, "
              f"after {calibration['nll_after']:.4f}; temperature {calibration['temperature']:.4g}"
              + (f", saved to {saved} (inference.py applies it; --no-calibration skips it)" if saved else ""))
    page.image(figures.reliability_picture(calibration["bins_before"], calibration["bins_after"],
                                           calibration["temperature"], folder / "reliability.png"),
               "reliability diagram")
    before, after = calibration["bins_before"], calibration["bins_after"]
    pd.DataFrame({"from": before["edges"][:-1], "to": before["edges"][1:], "samples": before["count"],
                  "confidence": before["confidence"], "accuracy": before["accuracy"],
                  "samples_after": after["count"], "confidence_after": after["confidence"],
                  "accuracy_after": after["accuracy"]}).to_csv(folder / "calibration_bins.csv", index=False)
