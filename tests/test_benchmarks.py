"""Each benchmark runs end to end with one tiny round, so that none of them rots. Nothing is timed here."""
import pytest

from tests.conftest import run_script

pytestmark = pytest.mark.slow


def test_overhead_benchmark_smoke():
    result = run_script("benchmarks/overhead.py", "--rounds", "1", "--short", "1", "--long", "2", check=True)
    assert "overhead ratio" in result.stdout and "fixed cost per batch" in result.stdout
    assert "DIFFER" not in result.stdout, "both paths must do the same work: the final losses match"


def test_startup_benchmark_smoke():
    result = run_script("benchmarks/startup.py", "--runs", "1", check=True)
    assert "--help:" in result.stdout and "--dry-run" in result.stdout


def test_dataloading_benchmark_smoke():
    result = run_script("benchmarks/dataloading.py", "--images", "32", "--rounds", "1", "--epochs", "1", check=True)
    assert "ImageDataset vs ImageFolder, 2 workers" in result.stdout


def test_gpu_throughput_script_smoke():
    result = run_script("benchmarks/gpu_throughput.py", "--smoke", check=True)
    assert "bf16" in result.stdout
