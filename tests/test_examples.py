"""The example configs train to what README promises, trained in full once: the README's first command
as a user runs it (a new process), the iris example with train.py's main in this process."""
import pandas as pd
import pytest

from tests.conftest import run_dirs, run_in_process, run_script

pytestmark = pytest.mark.slow


def train_example(config: str, name: str, tmp_path, new_process: bool = False) -> pd.DataFrame:
    args = ("train.py", "-c", config, f"trainer.save_dir={tmp_path / 'saved'}", "trainer.progress_bar=false")
    if new_process:
        run_script(*args, check=True, timeout=600)
    else:
        run_in_process(*args, check=True)
    (run,) = run_dirs(tmp_path, name)
    return pd.read_csv(run / "metrics.csv")


def test_the_default_config_reaches_about_098(tmp_path):
    """README: "ending near val_accuracy 0.98" (up to 20 epochs of a small ResNet on the digits)."""
    metrics = train_example("config.json", "Digits_ResNet", tmp_path, new_process=True)
    assert metrics["val_accuracy"].iloc[-1] >= 0.97, metrics[["epoch", "val_accuracy"]].to_string()


def test_the_iris_example_trains(tmp_path):
    metrics = train_example("configs/iris_mlp.json", "Iris_MLP", tmp_path)
    assert metrics["val_accuracy"].max() >= 0.9, metrics[["epoch", "val_accuracy"]].to_string()
    assert metrics["val_accuracy"].iloc[-1] >= 0.9
