"""The newer features guard their inputs: a bad value is one exact `error:` line (exit 2) before anything
heavy, a setting that can be meant but usually is not runs with one exact `warning:` line."""
import json

import pytest
import torch

from tests.conftest import IRIS_CONFIG, TINY_CONFIG, make_config, run_dirs, run_in_process

MULTILABEL = {"task": "MultiLabel", "loss": "bce_with_logits", "metrics": []}
REGRESSION = {"task": "Regression", "loss": "mse_loss", "metrics": [], "arch.args.num_classes": 1}
GROUP = {"match": r"^net\.3\.", "name": "head"}

# name: (config changes on the iris config, the exact error line)
BAD_VALUES = {
    "negative group rate": ({"optimizer.param_groups": [GROUP | {"lr": -0.1}]},
                            "optimizer.param_groups.0.lr: must be 0 or more, got -0.1"),
    "group rate as text": ({"optimizer.param_groups": [GROUP | {"lr": "0.1"}]},
                           "optimizer.param_groups.0.lr: must be a number, got '0.1'"),
    "group momentum of 1": ({"optimizer.param_groups": [GROUP | {"momentum": 1.0}]},
                            "optimizer.param_groups.0.momentum: must be in [0, 1), got 1.0"),
    "group without match": ({"optimizer.param_groups": [{"lr": 0.1}]},
                            "optimizer.param_groups.0: must be {\"match\": REGEX, \"name\": NAME, \"lr\": ...}, "
                            "got {'lr': 0.1}"),
    "group regex that does not compile": ({"optimizer.param_groups": [{"match": "net.(3"}]},
                                          "optimizer.param_groups.0.match: not a regular expression: missing ), "
                                          "unterminated subpattern at position 4"),
    "two groups of one name": ({"optimizer.param_groups": [GROUP, {"match": r"^net\.0\.", "name": "head"}]},
                               "optimizer.param_groups.1.name: 'head' names another group (the parameters no entry "
                               "matches are \"default\"): give each its own"),
    "negative rate": ({"optimizer.args.lr": -0.01}, "optimizer.args.lr: must be 0 or more, got -0.01"),
    "ReduceLROnPlateau every step": ({"lr_scheduler": {"type": "ReduceLROnPlateau", "interval": "step"}},
                                     "lr_scheduler.interval: ReduceLROnPlateau steps on the monitored value, which "
                                     "exists once an epoch: use \"epoch\""),
    "a grace period within one heartbeat": ({"tune": {"heartbeat_interval": 60, "grace_period": 30}},
                                            "tune.grace_period: 30 s is not longer than tune.heartbeat_interval "
                                            "(60 s): the trial of a live worker would be taken for dead and run "
                                            "again"),
    "head weights as a list": ({"task": {"type": "MultiHead", "args": {"heads": {"a": 3}, "weights": [1]}}},
                               "task.args.weights: must map head names to weights, e.g. {\"age\": 2.0}, got [1]"),
    "negative weight decay": ({"optimizer.args.weight_decay": -1}, "optimizer.args.weight_decay: must be 0 or "
                                                                   "more, got -1"),
    "betas out of range": ({"optimizer": {"type": "Adam", "args": {"lr": 0.01, "betas": [0.9, 1.5]}}},
                           "optimizer.args.betas: must be two numbers in [0, 1), e.g. [0.9, 0.999], got [0.9, 1.5]"),
    "unknown sampler": ({"data_loader.args.sampler": "balance"},
                        "data_loader.args.sampler: must be one of None, 'balanced', got 'balance'"),
    "negative head weight": ({"task": {"type": "MultiHead", "args": {"heads": {"a": 3}, "weights": {"a": -1}}}},
                             "task.args.weights.a: must be a number, 0 or more (a negative weight drives its loss "
                             "up), got -1"),
    "every head weight 0": ({"task": {"type": "MultiHead", "args": {"heads": {"a": 3}, "weights": {"a": 0}}}},
                            "task.args.weights: are all 0: no head would be trained"),
    "threshold above 1": (MULTILABEL | {"task": {"type": "MultiLabel", "args": {"thresholds": 1.5}}},
                          "task.args.thresholds: must be a probability in [0, 1] or a list of them (one per "
                          "label), got 1.5"),
    "a threshold per label, too few": (MULTILABEL | {"task": {"type": "MultiLabel",
                                                              "args": {"thresholds": [0.5, 0.5]}}},
                                       "task.args.thresholds: has 2 values, but arch.args.num_classes is 3 (one "
                                       "threshold per label)"),
    "metric threshold above 1": (MULTILABEL | {"metrics": [{"type": "MultilabelF1", "args": {"threshold": 2}}]},
                                 "metrics.0.args.threshold: must be a probability in [0, 1] or a list of them, got 2"),
    "negative class weight": ({"loss": {"type": "cross_entropy", "args": {"class_weights": [1, -1, 1]}}},
                              "loss.args.class_weights: entry 1 must be a number, 0 or more (a negative weight "
                              "drives the loss below 0), got -1"),
    "class weights of another length": ({"loss": {"type": "cross_entropy", "args": {"class_weights": [1, 2]}}},
                                        "loss.args.class_weights: has 2 weights, but arch.args.num_classes is 3"),
    "every class weight 0": ({"loss": {"type": "cross_entropy", "args": {"class_weights": [0, 0, 0]}}},
                             "loss.args.class_weights: are all 0: nothing would be learned"),
    "balanced sampler on values": (REGRESSION | {"data_loader.args.sampler": "balanced"},
                                   "data_loader.args.sampler: 'balanced' draws every class equally often, but the "
                                   "targets of Regression are values, not classes; remove it"),
    "MixUp on labels": (MULTILABEL | {"trainer.mixup": {}},
                        "trainer.mixup: mixes one class index per sample into class probabilities, but MultiLabel "
                        "has targets of another kind (labels); remove it"),
    "MixUp on a table": ({"trainer.mixup": {"cutmix_alpha": 0.0}},
                         "trainer.mixup: MixUp and CutMix (torchvision's) mix image batches (N, C, H, W), but the "
                         "batches are 2-D: remove it for this data"),
}


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_bad_value_is_one_exact_error_line(case, tmp_path):
    changes, expected = BAD_VALUES[case]
    result = run_in_process("train.py", "-c", str(make_config(tmp_path, IRIS_CONFIG, **changes)), "--dry-run")
    assert (result.returncode, error_lines(result)) == (2, [f"error: {expected}"])


# name: (base config, changes, the exact warning line)
MEANT_RARELY = {
    "warmup as long as the run": (IRIS_CONFIG, {"lr_scheduler": {"type": "StepLR", "args": {"step_size": 2},
                                                                 "warmup": {"epochs": 3}}},
                                  "lr_scheduler.warmup.epochs: 3 is not shorter than trainer.epochs (3): the run ends "
                                  "inside the warmup and never trains at the configured rate"),
    "warmup steps beyond the run": (IRIS_CONFIG, {"lr_scheduler": {"type": "StepLR", "args": {"step_size": 2},
                                                                   "interval": "step", "warmup": {"steps": 50}}},
                                    # 3 epochs of 6 steps: 96 training samples in batches of 16
                                    "lr_scheduler.warmup.steps: 50 is not fewer than the run's 18 optimizer steps: "
                                    "the run ends inside the warmup and never trains at the configured rate"),
    "freezing past the last epoch": (TINY_CONFIG, {"trainer.freeze_backbone_epochs": 2},
                                     "trainer.freeze_backbone_epochs: 2 is not fewer than trainer.epochs (2): the "
                                     "backbone stays frozen for the whole run and only the head trains"),
    "a batch larger than the data": (IRIS_CONFIG, {"data_loader.args.batch_size": 500},
                                     "data_loader.args.batch_size: 500 is larger than the 96 training samples: every "
                                     "epoch is a single batch of 96"),
}


@pytest.mark.parametrize("case", list(MEANT_RARELY))
def test_a_setting_meant_rarely_runs_with_one_warning_line(case, tmp_path):
    base, changes, expected = MEANT_RARELY[case]
    result = run_in_process("train.py", "-c", str(make_config(tmp_path, base, **changes)), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("warning: ")] == [f"warning: {expected}"]


def test_a_key_given_twice_names_the_key_and_its_line(tmp_path):
    text = make_config(tmp_path, IRIS_CONFIG).read_text()  # indented: one key a line
    path = tmp_path / "twice.json"
    path.write_text(text.replace('"epochs": 3,', '"epochs": 3,\n    "epochs": 30,'))
    line = next(i for i, row in enumerate(path.read_text().splitlines(), 1) if '"epochs": 30' in row)
    result = run_in_process("train.py", "-c", str(path), "--dry-run")
    assert error_lines(result) == [f"error: {path}:{line}: the key 'epochs' is given twice in one object (JSON "
                                   "would keep only the last): remove one"]


# name: (search space entry, extra command-line words, the exact error line)
BAD_SEARCHES = {
    "a step wider than the range": ({"optimizer.args.lr": {"type": "float", "low": 0.01, "high": 0.05, "step": 0.1}},
                                    [], "tune.space: optimizer.args.lr: the range 0.01 .. 0.05 with step 0.1 holds a "
                                        "single value: every trial would be the same; widen it, or set the value in "
                                        "the config instead"),
    "a negative rate": ({"optimizer.args.lr": {"type": "float", "low": -0.1, "high": 0.1}}, [],
                        "tune.space: optimizer.args.lr: must be 0 or more, got -0.1"),
    "a batch of 0": ({"data_loader.args.batch_size": {"type": "int", "low": 0, "high": 32}}, [],
                     "tune.space: data_loader.args.batch_size: must be positive, got 0"),
    "postgres instead of postgresql": ({"optimizer.args.lr": {"type": "float", "low": 0.01, "high": 0.1}},
                                       ["--storage", "postgres://user@db/optuna"],
                                       "--storage: postgres://user@db/optuna: unknown database kind 'postgres' (did "
                                       "you mean 'postgresql'?); optuna takes e.g. sqlite:///study.db, "
                                       "postgresql://user@host/db, mysql://user@host/db"),
    "a journal in a folder that does not exist": ({"optimizer.args.lr": {"type": "float", "low": 0.01, "high": 0.1}},
                                                  ["--storage", "/nonexistent/study.journal"],
                                                  "--storage: /nonexistent is not a folder (a journal file's folder "
                                                  "must exist)"),
    "an in-memory database": ({"optimizer.args.lr": {"type": "float", "low": 0.01, "high": 0.1}},
                              ["--storage", "sqlite://"],
                              "--storage: sqlite:// is an in-memory database, which no other worker sees and which "
                              "is lost at the end: give a file, e.g. sqlite:///sweep/study.db"),
}


@pytest.mark.parametrize("case", list(BAD_SEARCHES))
def test_a_bad_search_is_one_exact_error_line_in_the_dry_run(case, tmp_path):
    space, extra, expected = BAD_SEARCHES[case]
    config = make_config(tmp_path, IRIS_CONFIG, **{"tune": {"space": space}})
    result = run_in_process("tune.py", "-c", str(config), "--trials", "2", "--dry-run", *extra)
    assert (result.returncode, error_lines(result)) == (2, [f"error: {expected}"])


@pytest.fixture(scope="module")
def iris_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("iris")
    run_in_process("train.py", "-c", str(make_config(folder, IRIS_CONFIG, **{"trainer.epochs": 1})), check=True)
    return run_dirs(folder, "TinyIris")[0] / "last.pth"


def altered(checkpoint_path, folder, change) -> str:
    """A copy of the checkpoint with ``change(checkpoint)`` applied, saved (and checksummed) anew."""
    from utils.checkpoint.files import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(checkpoint_path)
    change(checkpoint)
    save_checkpoint(checkpoint, folder / "other.pth")
    return str(folder / "other.pth")


def test_inference_refuses_an_ensemble_of_different_tasks_heads_or_classes(iris_checkpoint, tmp_path):
    changes = {
        "task": (lambda c: c["config"].update(task={"type": "MultiLabel", "args": {}}),
                 "was trained for the task MultiLabel, but the predictions are read as Classification: an ensemble "
                 "averages models of one task"),
        "classes": (lambda c: c.update(classes=["a", "b", "c"]),
                    f"was trained on the classes a, b, c, {iris_checkpoint} on setosa, versicolor, virginica: "
                    "averaging would mix classes"),
        "width": (lambda c: c["config"]["arch"]["args"].update(num_classes=4),
                  f"has 4 outputs, {iris_checkpoint} has 3: the ensemble's outputs cannot be averaged"),
    }
    for change, expected in changes.values():
        other = altered(iris_checkpoint, tmp_path, change)
        result = run_in_process("inference.py", "--resume", str(iris_checkpoint), "--resume", other,
                                "--output", str(tmp_path / "p.csv"))
        assert (result.returncode, error_lines(result)) == (2, [f"error: {other}: {expected}"])
        assert not (tmp_path / "p.csv").exists()


def test_inference_refuses_an_output_that_is_a_checkpoint_a_folder_or_unwritable(iris_checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = {
        str(iris_checkpoint): f"{iris_checkpoint} has a checkpoint's name (.pth): the predictions are a CSV file, "
                              "e.g. predictions.csv",
        str(tmp_path): f"{tmp_path} is a folder: give a file name, e.g. {tmp_path / 'predictions.csv'}",
        str(blocker / "p.csv"): f"{blocker} is a file, not a folder",
        "/proc/p.csv": "cannot write in /proc: No such file or directory",
    }
    before = iris_checkpoint.read_bytes()
    for output, expected in cases.items():
        result = run_in_process("inference.py", "--resume", str(iris_checkpoint), "--output", output)
        assert (result.returncode, error_lines(result)) == (2, [f"error: --output: {expected}"])
    assert iris_checkpoint.read_bytes() == before


def test_a_flip_as_test_time_augmentation_of_a_table_is_a_warning(iris_checkpoint, tmp_path):
    flip = json.dumps([{"type": "RandomHorizontalFlip", "args": {"p": 1.0}}])
    result = run_in_process("inference.py", "--resume", str(iris_checkpoint), f"inference.tta={flip}", "--output",
                            str(tmp_path / "p.csv"), check=True)
    assert [line for line in result.stdout.splitlines() if line.startswith("warning: ")] == [
        "warning: inference.tta.0: RandomHorizontalFlip on 1-D samples (not images): it moves the features of a "
        "table row, and the averaged predictions mix views the model never saw"]


def test_a_weights_file_of_another_architecture_is_an_error_unless_not_strict(caplog):
    from utils.checkpoint.pretrained import load_matching
    from utils.errors import ConfigError

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3))
    weights = {"0.weight": torch.ones(8, 4), "2.weight": torch.ones(5, 8)}  # 1 of the model's 6 tensors fits
    with pytest.raises(ConfigError) as error:
        load_matching(model, weights, "other.pth", strict=True)
    assert str(error.value) == ("arch.args.weights_file: only 1 of the model's 6 tensors fit other.pth: the weights "
                                "of another architecture? Set arch.args.strict to false to load them anyway")
    load_matching(model, weights, "other.pth", strict=False)
    assert torch.equal(model[0].weight, torch.ones(8, 4))
    assert ("warning: arch.args.weights_file: only 1 of the model's 6 tensors fit other.pth; the other 5 keep their "
            "fresh values") in caplog.messages


def test_unreadable_weights_files_and_checkpoints_say_what_is_wrong(tmp_path):
    from safetensors.torch import save_file

    from utils.checkpoint.files import load_checkpoint
    from utils.checkpoint.pretrained import read_weights_file
    from utils.errors import CheckpointError

    torch.save({"w": torch.zeros(64, 64)}, tmp_path / "whole.pth")
    save_file({"w": torch.zeros(64, 64)}, tmp_path / "whole.safetensors")
    torch_bytes = (tmp_path / "whole.pth").read_bytes()
    safetensors_bytes = (tmp_path / "whole.safetensors").read_bytes()
    files = {
        "empty.pth": (b"", "is empty (0 bytes)"),
        "cut.pth": (torch_bytes[:1000], "is a torch.save file cut short (truncated: 1000 bytes, its end is missing)"),
        "text.pth": (b"not a model at all", "is not a torch.save or safetensors file (it starts with b'not a model ')"),
        "swapped.pth": (safetensors_bytes, "is a safetensors file, not a torch.save file (name it .safetensors)"),
        "cut.safetensors": (safetensors_bytes[:1000], f"is a safetensors file cut short (truncated: 1000 of its "
                                                      f"{len(safetensors_bytes)} bytes)"),
        "swapped.safetensors": (torch_bytes, "is a torch.save file, not safetensors (name it .pth)"),
    }
    for name, (content, expected) in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as error:
            read_weights_file(tmp_path / name)
        assert str(error.value) == f"{tmp_path / name}: cannot be read: it {expected}"
    for name in ("empty.pth", "cut.pth"):
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(tmp_path / name)
        assert str(error.value) == f"{tmp_path / name}: not a checkpoint: it {files[name][1]}"
