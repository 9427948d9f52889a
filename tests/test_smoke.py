"""The README's first command, end to end, on a tiny config (train.py's main, in this process; test_examples.py
runs the command itself in a new process)."""
import pandas as pd

from tests.conftest import make_config, run_dirs, run_in_process


def test_train_tiny_config_end_to_end(tmp_path):
    config = make_config(tmp_path)
    result = run_in_process("train.py", "-c", str(config), check=True)
    (run,) = run_dirs(tmp_path)
    for name in ("config.json", "info.log", "metrics.csv", "last.pth", "model_best.pth", "checkpoint-epoch2.pth"):
        assert (run / name).is_file(), name
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == ["epoch", "loss", "accuracy", "top_k_acc", "val_loss", "val_accuracy",
                                     "val_top_k_acc", "lr", "epoch_time", "data_wait"]
    assert list(metrics["epoch"]) == [1, 2]
    assert "val_accuracy" in result.stdout
