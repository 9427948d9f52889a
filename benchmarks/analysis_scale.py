"""analyze.py at scale: 100,000 predictions of 100 classes (a CSV of about 60 MB), its time and peak memory.

    python benchmarks/analysis_scale.py                          # 100,000 x 100, about a minute
    python benchmarks/analysis_scale.py --rows 2000 --classes 5  # a smoke run

The CSV is generated (an overconfident model with folds and groups). The reference is a process that
only reads the same CSV with pandas (the least any analysis must do); the figures are analyze.py's
wall time and peak resident memory in a fresh process, and their ratios to the reference.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
READ_ONLY = "import sys, pandas as pd; pd.read_csv(sys.argv[1], dtype={'id': str})"


def make_csv(path: Path, rows: int, classes: int, seed: int = 0) -> None:
    """Predictions as oof_predictions.csv has them, written in chunks (float32 probabilities)."""
    rng = np.random.default_rng(seed)
    header = True
    for start in range(0, rows, 20000):
        n = min(20000, rows - start)
        logits = rng.normal(0, 2, (n, classes)).astype(np.float32)
        targets = logits.argmax(axis=1)
        noisy = rng.random(n) < 0.3
        targets[noisy] = rng.integers(0, classes, noisy.sum())
        logits *= 2  # overconfident
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        table = {"id": np.arange(start, start + n), "fold": np.arange(start, start + n) % 5,
                 "group": rng.integers(0, 500, n), "prediction": probs.argmax(axis=1), "target": targets}
        table |= {f"prob_{k}": probs[:, k] for k in range(classes)}
        pd.DataFrame(table).to_csv(path, mode="w" if header else "a", header=header, index=False,
                                   float_format="%.3g")
        header = False


def measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident memory in MB) of ``command`` run in a fresh process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{process.stderr.read().decode()[-2000:]}")
    process.stderr.close()
    return seconds, usage.ru_maxrss / 1024  # kilobytes on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="analysis_scale_") as temp:
        csv = Path(temp) / "oof_predictions.csv"
        make_csv(csv, args.rows, args.classes)
        size = csv.stat().st_size / 1e6
        read_seconds, read_memory = measure([sys.executable, "-c", READ_ONLY, str(csv)])
        seconds, memory = measure([sys.executable, "analyze.py", str(csv), "--out", str(Path(temp) / "report"),
                                   "--no-progress"])
        pictures = sorted(p.name for p in (Path(temp) / "report").rglob("*.png"))
    print(f"{args.rows} predictions x {args.classes} classes, CSV {size:.0f} MB")
    print(f"reference (pandas reads the CSV):  {read_seconds:6.1f} s  {read_memory:7.0f} MB peak")
    print(f"analyze.py:                        {seconds:6.1f} s  {memory:7.0f} MB peak")
    print(f"ratio to the reference: time {seconds / read_seconds:.1f}x, memory {memory / read_memory:.1f}x; "
          f"pictures: {', '.join(pictures)}")


if __name__ == "__main__":
    main()
