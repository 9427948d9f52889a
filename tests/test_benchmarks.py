"""Each benchmark runs end to end with one tiny round, so that none of them rots. Nothing is timed here.

The start-up benchmark starts its own processes, which is what it measures; the others run in this
process, as ``python benchmarks/<script> ARGS`` runs them (as ``__main__``, with that command line).
"""
import runpy
import sys

import pytest

from logger.logger import setup_logging
from tests.conftest import REPO, run_script

pytestmark = pytest.mark.slow


def run_benchmark(script: str, *args: str, monkeypatch, capsys) -> str:
    """``python benchmarks/<script> ARGS`` in this process; what it printed."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(REPO / "benchmarks" / script), run_name="__main__")
    setup_logging(None, 1)  # the benchmarks configure logging for themselves
    return capsys.readouterr().out


def test_overhead_benchmark_smoke(monkeypatch, capsys):
    out = run_benchmark("overhead.py", "--processes", "1", "--rounds", "1", "--short", "1", "--long", "2",
                        monkeypatch=monkeypatch, capsys=capsys)
    assert "overhead ratio" in out and "fixed cost per batch" in out
    assert "DIFFER" not in out, "both paths must do the same work: the final losses match"


def test_overhead_benchmark_measures_in_fresh_processes_and_takes_the_median(monkeypatch, capsys):
    import subprocess

    started = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: started.append(command) or real_run(command, **kw))
    out = run_benchmark("overhead.py", "--processes", "2", "--rounds", "1", "--short", "1", "--long", "2",
                        monkeypatch=monkeypatch, capsys=capsys)
    assert len(started) == 2 and all("--json" in command for command in started)
    assert "2 processes x 1 rounds" in out and "fixed cost per batch" in out and "DIFFER" not in out


def test_startup_benchmark_smoke():
    result = run_script("benchmarks/startup.py", "--runs", "1", "--warmup", "0", check=True)
    assert "--help:" in result.stdout and "--dry-run" in result.stdout


def test_dataloading_benchmark_smoke(monkeypatch, capsys):
    out = run_benchmark("dataloading.py", "--images", "32", "--rounds", "1", "--epochs", "1", monkeypatch=monkeypatch,
                        capsys=capsys)
    assert "ImageDataset vs ImageFolder, 2 workers" in out


def test_gpu_throughput_script_smoke(monkeypatch, capsys):
    assert "bf16" in run_benchmark("gpu_throughput.py", "--smoke", monkeypatch=monkeypatch, capsys=capsys)


def test_analysis_scale_benchmark_smoke(monkeypatch, capsys):
    out = run_benchmark("analysis_scale.py", "--rows", "2000", "--classes", "5", monkeypatch=monkeypatch,
                        capsys=capsys)
    assert "ratio to the reference" in out and "confusion.png" in out
