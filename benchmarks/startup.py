"""Start-up time: ``train.py --help`` and ``--dry-run`` beside a bare ``import torch``.

    python benchmarks/startup.py                          # 7 runs of each, about a minute
    python benchmarks/startup.py --runs 1 --warmup 0      # a smoke run

Each command runs in a fresh Python process, from the repository root, as a user starts it;
the median wall time over the runs is reported.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wall_time(args: list[str], runs: int, warmup: int = 1) -> float:
    """Median seconds of ``python <args>`` over ``runs`` runs, after ``warmup`` unmeasured ones."""
    times = []
    for i in range(warmup + runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=REPO, check=True, capture_output=True)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs of each command first (file cache)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as save_dir:
        commands = {
            'python -c "import torch"': ["-c", "import torch"],
            "python train.py --help": ["train.py", "--help"],
            "python train.py -c config.json --dry-run": ["train.py", "-c", "config.json", "--dry-run",
                                                         f"trainer.save_dir={save_dir}"],
        }
        results = {name: wall_time(command, args.runs, args.warmup) for name, command in commands.items()}
    torch_time = results['python -c "import torch"']
    print(f"median of {args.runs} runs each")
    print(f"{'command':<45}{'seconds':>10}{'x import torch':>16}")
    for name, seconds in results.items():
        print(f"{name:<45}{seconds:>10.3f}{seconds / torch_time:>16.2f}")
    help_ratio = results["python train.py --help"] / torch_time
    print(f"--help: {help_ratio:.2f}x import torch  target <= 1.2x: {'met' if help_ratio <= 1.2 else 'MISSED'}")


if __name__ == "__main__":
    main()
