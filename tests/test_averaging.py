"""Top-k checkpoints and their average (trainer.save_top_k, trainer.average_top_k), and the standalone
``python -m utils.average_checkpoints``: the files kept are the K best epochs of metrics.csv, the
average is the mean of their weights (computed here with numpy), resuming keeps the list, and
inference.py reads the averaged file."""
import contextlib
import csv
import io
import json
import re

import numpy as np
import pytest
import torch

import inference
from tests.conftest import make_config, run_dirs, run_in_process
from utils import average_checkpoints
from utils.checkpoint.files import load_checkpoint, save_checkpoint
from utils.cli import run_cli

K = 3
EPOCHS = 6
# A small training split (40% of the digits) and a high learning rate: the validation accuracy does not
# rise every epoch, so epochs enter the top-k and drop out of it again.
TOP_K = {"dataset.args.test_size": 0.6, "optimizer.args.lr": 0.03, "trainer.epochs": EPOCHS,
         "trainer.save_period": 0, "trainer.save_top_k": K, "trainer.average_top_k": True}


def metrics_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def expected_top_k(run_dir, k=K) -> list[int]:
    """The epochs of the k highest val_accuracy values of metrics.csv (ties: the earlier epoch first)."""
    rows = metrics_rows(run_dir)
    ranked = sorted(rows, key=lambda row: (-float(row["val_accuracy"]), int(row["epoch"])))
    return [int(row["epoch"]) for row in ranked[:k]]


def numpy_mean(state_dicts: list[dict], key: str) -> torch.Tensor:
    stacked = np.stack([sd[key].numpy().astype(np.float64) for sd in state_dicts])
    return torch.from_numpy(stacked.mean(axis=0).astype(np.float32))


def average_cli(*args: str) -> tuple[int, str]:
    """``python -m utils.average_checkpoints ARGS`` in this process: (exit code, stderr)."""
    stderr = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            run_cli(lambda: average_checkpoints.main(list(args)))
        except SystemExit as exit_info:
            code = exit_info.code
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def top_k_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("top_k")
    run_in_process("train.py", "-c", str(make_config(folder, **TOP_K)), check=True)
    (run,) = run_dirs(folder)
    return run


def test_the_kept_checkpoints_are_the_k_best_epochs_of_metrics_csv(top_k_run):
    expected = expected_top_k(top_k_run)
    kept = sorted(int(re.search(r"\d+", path.stem).group()) for path in top_k_run.glob("model_top_epoch*.pth"))
    assert kept == sorted(expected)
    listing = json.loads((top_k_run / "top_k.json").read_text())
    assert [entry["epoch"] for entry in listing["checkpoints"]] == expected
    by_epoch = {int(row["epoch"]): float(row["val_accuracy"]) for row in metrics_rows(top_k_run)}
    for entry in listing["checkpoints"]:
        assert entry["value"] == by_epoch[entry["epoch"]]
        checkpoint = load_checkpoint(top_k_run / entry["file"])
        assert checkpoint["epoch"] == entry["epoch"] and checkpoint["batches_done"] == 0
        assert checkpoint["metrics"]["val_accuracy"] == by_epoch[entry["epoch"]]


def test_the_average_is_the_mean_of_the_top_k_weights_and_inference_reads_it(top_k_run, tmp_path):
    files = [top_k_run / entry["file"] for entry in json.loads((top_k_run / "top_k.json").read_text())["checkpoints"]]
    weights = [load_checkpoint(path)["state_dict"] for path in files]
    averaged = load_checkpoint(top_k_run / "model_averaged.pth")
    assert averaged["metrics"]["averaged_epochs"] == expected_top_k(top_k_run)
    for key, tensor in averaged["state_dict"].items():
        if "running_" in key or "num_batches" in key:
            continue
        assert torch.equal(tensor, numpy_mean(weights, key)), key
    # The BatchNorm statistics were recomputed for the averaged weights, not averaged.
    key = next(k for k in averaged["state_dict"] if k.endswith("running_mean"))
    assert not torch.allclose(averaged["state_dict"][key], numpy_mean(weights, key), atol=1e-4)

    # inference.py scores the averaged file on the validation split as training did.
    log_size = (top_k_run / "info.log").stat().st_size
    inference.main(["--resume", str(top_k_run / "model_averaged.pth"), "--split", "valid",
                    "--output", str(tmp_path / "predictions.csv")])
    (loss,) = re.findall(r"\bloss (\d+\.\d+)", (top_k_run / "info.log").read_text()[log_size:])
    assert float(loss) == pytest.approx(averaged["metrics"]["val_loss"], abs=2e-6)


def test_the_script_averages_every_tensor_and_refuses_other_models(top_k_run, tmp_path):
    files = sorted(top_k_run.glob("model_top_epoch*.pth"))[:2]
    output = tmp_path / "averaged.pth"
    assert average_cli(*map(str, files), "-o", str(output)) == (0, "")
    checkpoints = [load_checkpoint(path) for path in files]
    averaged = load_checkpoint(output)
    for key, tensor in averaged["state_dict"].items():
        values = [c["state_dict"][key] for c in checkpoints]
        if tensor.is_floating_point():
            assert torch.equal(tensor, numpy_mean([c["state_dict"] for c in checkpoints], key)), key
        else:  # num_batches_tracked: the larger count
            assert tensor.item() == max(v.item() for v in values), key

    inference.main(["--resume", str(output), "--output", str(tmp_path / "predictions.csv")])
    assert (tmp_path / "predictions.csv").stat().st_size > 0

    other = load_checkpoint(files[0])  # the same tensors, but saved by another model class
    other["arch"], other["config"]["arch"]["type"] = "MLP", "MLP"
    save_checkpoint(other, tmp_path / "mlp.pth")
    fewer = load_checkpoint(files[0])
    fewer["state_dict"].pop(next(iter(fewer["state_dict"])))
    save_checkpoint(fewer, tmp_path / "fewer.pth")
    for bad in ("mlp.pth", "fewer.pth"):
        code, stderr = average_cli(str(files[0]), str(tmp_path / bad), "-o", str(tmp_path / "x.pth"))
        assert code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
        assert bad in stderr and not (tmp_path / "x.pth").exists()


def test_resuming_keeps_the_top_k_list(top_k_run, tmp_path):
    config = make_config(tmp_path, **TOP_K | {"trainer.epochs": 3})
    run_in_process("train.py", "-c", str(config), check=True)
    (run,) = run_dirs(tmp_path)
    (run / "model_top_epoch99.pth").write_bytes(b"left by a crash")  # no entry names it: removed on resume
    run_in_process("train.py", "-r", str(run), f"trainer.epochs={EPOCHS}", check=True)
    assert (run / "top_k.json").read_text() == (top_k_run / "top_k.json").read_text()
    assert sorted(p.name for p in run.glob("model_top_*")) == sorted(p.name for p in top_k_run.glob("model_top_*"))
    assert load_checkpoint(run / "last.pth")["top_k"] == load_checkpoint(top_k_run / "last.pth")["top_k"]
    resumed, reference = (load_checkpoint(r / "model_averaged.pth")["state_dict"] for r in (run, top_k_run))
    assert all(torch.equal(resumed[key], reference[key]) for key in reference)


@pytest.mark.parametrize("changes, where", [
    ({"trainer.save_top_k": -1}, "trainer.save_top_k"),
    ({"trainer.save_top_k": 2, "trainer.monitor": "off"}, "trainer.save_top_k"),
    ({"trainer.average_top_k": True}, "trainer.average_top_k"),
    ({"trainer.swa": {"start": 2.0, "lr": 0.01}, "trainer.epochs": 1}, "trainer.swa.start"),
    ({"trainer.swa": {"start": 2, "lr": 0.01}, "trainer.epochs": 1}, "trainer.swa.start"),
    ({"trainer.swa": {"start": 0.5, "lr": 0.01}, "trainer.ema": {"decay": 0.9}}, "trainer.swa"),
])
def test_bad_averaging_settings_are_one_error_line(tmp_path, changes, where):
    result = run_in_process("train.py", "-c", str(make_config(tmp_path, **changes)))
    assert result.returncode == 2 and result.stderr.startswith(f"error: {where}: "), result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "saved").exists()


def test_kfold_predicts_each_fold_with_the_better_of_model_best_and_the_average(tmp_path):
    config = make_config(tmp_path, **TOP_K | {"trainer.epochs": 3, "trainer.save_top_k": 2})
    run_in_process("kfold_train.py", "-c", str(config), "--folds", "2", check=True)
    (run,) = run_dirs(tmp_path)
    for fold in (0, 1):
        fold_dir = run / f"fold_{fold}"
        best = load_checkpoint(fold_dir / "model_best.pth")["monitor_best"]
        averaged = load_checkpoint(fold_dir / "model_averaged.pth")["metrics"]["val_accuracy"]
        result = json.loads((fold_dir / "fold_result.json").read_text())
        assert result["best_val_accuracy"] == max(best, averaged)
        assert result["val_accuracy"] == max(best, averaged)  # the held-out metrics of the weights used


def test_resuming_from_averaged_weights_is_refused(top_k_run):
    result = run_in_process("train.py", "-r", str(top_k_run / "model_averaged.pth"))
    assert result.returncode == 2 and "holds averaged weights" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.slow
def test_top_k_average_and_swa_under_torchrun(tmp_path):
    from tests.test_distributed import DDP_CONFIG, torchrun

    config = make_config(tmp_path, DDP_CONFIG, **{"trainer.save_top_k": 2, "trainer.average_top_k": True,
                                                  "trainer.swa": {"start": 3, "lr": 0.05}})
    torchrun("train.py", "-c", str(config), check=True, timeout=240)
    (run,) = run_dirs(tmp_path, "TinyIris")
    entries = json.loads((run / "top_k.json").read_text())["checkpoints"]
    weights = [load_checkpoint(run / entry["file"])["swa"] or load_checkpoint(run / entry["file"]) for entry in entries]
    averaged = load_checkpoint(run / "model_averaged.pth")
    for key, tensor in averaged["state_dict"].items():  # the SWA average where an epoch had one
        assert torch.equal(tensor, numpy_mean([w["state_dict"] for w in weights], key)), key
    swa = load_checkpoint(run / "model_swa.pth")
    assert swa["metrics"]["swa_n_averaged"] == 2 and "val_loss" in swa["metrics"]
