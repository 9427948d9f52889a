"""TensorBoard, wandb and metrics.csv, read back from the files a run writes."""
import signal
import struct

import pandas as pd
import pytest
import torch

from tests.conftest import launch, make_config, run_dirs, run_in_process, run_script

BLOCK = 32768  # the .wandb file is a log of 32 KiB blocks of (crc, length, type)-framed records


def wandb_records(path):
    """The protobuf records of an offline wandb run file (run-<id>.wandb)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, chunks = 7, b""
    while position + 7 <= len(data):
        left = BLOCK - position % BLOCK
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0 and length == 0:
            position += left
            continue
        chunks += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def wandb_run(offline_dir):
    """(run id, config keys, history rows, summary) of one offline run directory."""
    (file,) = offline_dir.glob("run-*.wandb")
    run_id, config, history, summary = None, {}, [], {}
    for record in wandb_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
            config = {item.key: item.value_json for item in record.run.config.update}
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
        elif kind == "summary":
            summary |= {item.key or "/".join(item.nested_key): item.value_json for item in record.summary.update}
    return run_id, config, history, summary


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A 3-epoch run with TensorBoard and wandb, stopped, then resumed to 5 epochs."""
    tmp_path = tmp_path_factory.mktemp("tracked")
    config = make_config(tmp_path, **{"trainer.epochs": 3, "trainer.tensorboard": True, "trainer.log_step": 5,
                                      "wandb": {"enabled": True, "tags": ["test"]}})
    run_in_process("train.py", "-c", str(config), check=True)
    (run,) = run_dirs(tmp_path)
    first_id = torch.load(run / "last.pth", weights_only=True)["wandb_id"]
    run_in_process("train.py", "-r", str(run), "trainer.epochs=5", check=True)
    return run, first_id


def test_tensorboard_scalars_per_epoch_continue_after_resume(tracked_run):
    run, _ = tracked_run
    accumulator = events(run / "tensorboard")
    tags = accumulator.Tags()["scalars"]
    for tag in ("loss/train", "loss/val", "accuracy/train", "accuracy/val", "top_k_acc/val", "lr",
                "time/epoch_seconds", "time/data_wait", "time/samples_per_second", "loss/train_step", "epoch"):
        assert tag in tags
    epochs = [event.value for event in accumulator.Scalars("epoch")]
    assert epochs == [1, 2, 3, 4, 5], "one value per epoch, no gap, no repeat across the resume"
    steps = [event.step for event in accumulator.Scalars("accuracy/val")]
    assert steps == sorted(set(steps)) and len(steps) == 5
    metrics = pd.read_csv(run / "metrics.csv")
    assert [round(e.value, 5) for e in accumulator.Scalars("accuracy/val")] == [
        round(v, 5) for v in metrics["val_accuracy"]]
    step_losses = [event.step for event in accumulator.Scalars("loss/train_step")]
    assert step_losses == sorted(set(step_losses)), "per-step losses continue without a repeat"


def test_tensorboard_hides_the_events_of_an_epoch_redone_after_a_crash(tmp_path):
    config = make_config(tmp_path, **{"trainer.epochs": 3, "trainer.tensorboard": True, "trainer.log_step": 5})
    # Killed right after epoch 3 is recorded (metrics.csv, TensorBoard), before its checkpoint: the
    # resumed run redoes epoch 3 (or 2 and 3, if the epoch-2 checkpoint was still being written).
    crashed = launch("train.py", "-c", str(config), faults={"LAUNCH_KILL_AFTER_EPOCH": "3"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (run,) = run_dirs(tmp_path)
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] in (1, 2)
    assert events(run / "tensorboard").Scalars("epoch")[-1].value == 3, "the crashed epoch was recorded"

    run_in_process("train.py", "-r", str(run), check=True)
    accumulator = events(run / "tensorboard")
    assert [event.value for event in accumulator.Scalars("epoch")] == [1, 2, 3]
    metrics = pd.read_csv(run / "metrics.csv")
    for tag, column in (("accuracy/val", "val_accuracy"), ("loss/train", "loss"), ("loss/train_step", None)):
        scalars = accumulator.Scalars(tag)
        steps = [event.step for event in scalars]
        assert steps == sorted(set(steps)), f"{tag}: a step shown twice"
        if column:
            assert [round(e.value, 5) for e in scalars] == [round(v, 5) for v in metrics[column]], tag


def test_tensorboard_images_and_hparams(tracked_run):
    run, _ = tracked_run
    images = events(run / "tensorboard").Tags()["images"]
    assert {"inputs/train_batch", "val/confusion_matrix_best", "val/confusion_matrix_last"} <= set(images)
    hparams = events(run / "tensorboard" / "hparams")
    assert "hparam/best_val_accuracy" in hparams.Tags()["scalars"]
    best = hparams.Scalars("hparam/best_val_accuracy")[-1].value
    assert best == pytest.approx(pd.read_csv(run / "metrics.csv")["val_accuracy"].max())


def test_wandb_offline_run_has_config_history_and_summary(tracked_run):
    run, first_id = tracked_run
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2, "the resume re-attached to the run in a second offline segment"
    histories = []
    for folder in offline:
        run_id, config, history, summary = wandb_run(folder)
        assert run_id == first_id
        assert {"trainer", "optimizer", "arch"} <= set(config)
        histories.append(history)
    assert [len(h) for h in histories] == [3, 2]
    assert "val_accuracy" in histories[1][0] and histories[1][-1]["epoch"] == "5"
    assert "best_val_accuracy" in summary


def test_metrics_csv_is_complete_after_resume(tracked_run):
    run, _ = tracked_run
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1, 2, 3, 4, 5]


def test_wandb_mode_from_the_environment_wins(tmp_path):
    config = make_config(tmp_path, **{"trainer.epochs": 1, "wandb": {"enabled": True, "mode": "online"}})
    run_in_process("train.py", "-c", str(config), env={"WANDB_MODE": "offline"}, check=True)
    (run,) = run_dirs(tmp_path)
    assert list((run / "wandb").glob("offline-run-*"))


def test_kfold_folds_are_wandb_runs_in_one_group(tmp_path):
    config = make_config(tmp_path, **{"trainer.epochs": 1, "wandb": {"enabled": True}})
    run_in_process("kfold_train.py", "-c", str(config), "--folds", "2", check=True)
    (kfold_run,) = run_dirs(tmp_path)
    groups, names = set(), []
    for fold in ("fold_0", "fold_1"):
        (offline,) = (kfold_run / fold / "wandb").glob("offline-run-*")
        (file,) = offline.glob("run-*.wandb")
        for record in wandb_records(file):
            if record.WhichOneof("record_type") == "run":
                groups.add(record.run.run_group)
                names.append(record.run.display_name)
    assert groups == {f"Tiny/{kfold_run.name}"} and names == ["fold_0", "fold_1"]


def test_disabled_tracking_imports_neither(tmp_path):
    config = make_config(tmp_path, **{"trainer.tensorboard": False})
    result = run_script("-X", "importtime", "train.py", "-c", str(config), "--dry-run", check=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "torch" in imported
    assert not {name for name in imported if name.split(".")[0] in ("wandb", "tensorboard")}
    assert "torch.utils.tensorboard" not in imported


def test_event_files_are_written_by_the_calling_thread_one_file_per_writer(tmp_path):
    import threading

    from logger.visualization import EventFile, TensorboardWriter, scalars_summary

    # Threads of other tests' in-process runs (wandb's, tqdm's) may end meanwhile: none may start.
    threads = set(threading.enumerate())
    first = TensorboardWriter(tmp_path, True)
    first.add_scalars({"a/train": 1.0, "b/val": 2.0}, 3)
    assert set(threading.enumerate()) <= threads, "no writer thread"
    second = TensorboardWriter(tmp_path, True)  # the same process and second: a file of its own
    second.add_scalars({"a/train": 5.0}, 4)
    second.close()
    first.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    accumulator = events(tmp_path)
    assert [(e.step, e.value) for e in accumulator.Scalars("a/train")] == [(3, 1.0), (4, 5.0)]
    assert [(e.step, e.value) for e in accumulator.Scalars("b/val")] == [(3, 2.0)]

    # Events reach the disk at flush(), and at the latest flush_secs after the last flush.
    waiting, prompt = EventFile(tmp_path / "waiting", flush_secs=3600), EventFile(tmp_path / "prompt", flush_secs=0)
    sizes = {}
    for name, file in (("waiting", waiting), ("prompt", prompt)):
        (path,) = (tmp_path / name).iterdir()
        sizes[name] = path.stat().st_size
        file.add_summary(scalars_summary({"x": 1.0}), 1)
        sizes[name] = path.stat().st_size - sizes[name]
    assert sizes == {"waiting": 0, "prompt": sizes["prompt"]} and sizes["prompt"] > 0
    waiting.flush()
    assert events(tmp_path / "waiting").Scalars("x")[0].value == 1.0
