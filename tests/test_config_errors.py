"""Every config or command-line mistake ends with one line `error: <json path>: <what>`, exit code 2."""
import json

import pytest

import kfold_train
import train
from tests.conftest import REPO, TINY_CONFIG, make_config, run_in_process, run_script
from utils.cli import run_cli
from utils.errors import ConfigError


def run_main(main, argv, capsys) -> tuple[int, str]:
    """Run a script's main the way its ``__main__`` does; returns (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    return exit_info.value.code, capsys.readouterr().err


def assert_one_error(code: int, stderr: str, where: str, *words: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {where}"), lines[0]
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], lines[0]


# (config changes as dotted paths, or None to delete; extra command-line words; expected path; words)
BROKEN_CONFIGS = {
    "unknown top-level key": ({"optimiser": {}}, [], "optimiser", ["did you mean 'optimizer'"]),
    "unknown trainer key": ({"trainer.epoch": 3}, [], "trainer.epoch", ["did you mean 'epochs'"]),
    "missing section": ({"arch": None}, [], "arch", ["required"]),
    "missing epochs": ({"trainer.epochs": None}, [], "trainer.epochs", ["required"]),
    "zero epochs": ({"trainer.epochs": 0}, [], "trainer.epochs", ["positive"]),
    "epochs as text": ({"trainer.epochs": "ten"}, [], "trainer.epochs", ["integer"]),
    "fractional epochs": ({"trainer.epochs": 2.5}, [], "trainer.epochs", ["integer"]),
    "boolean epochs": ({"trainer.epochs": True}, [], "trainer.epochs", ["integer"]),
    "negative n_gpu": ({"n_gpu": -1}, [], "n_gpu", ["0 or more"]),
    "bad verbosity": ({"trainer.verbosity": 5}, [], "trainer.verbosity", ["one of"]),
    "bad amp": ({"trainer.amp": "fp8"}, [], "trainer.amp", ["bf16"]),
    "bad wandb mode": ({"wandb.mode": "sometimes"}, [], "wandb.mode", ["offline"]),
    "split fraction too large": ({"data_loader.args.validation_split": 1.5}, [],
                                 "data_loader.args.validation_split", ["[0, 1)"]),
    "negative split": ({"data_loader.args.validation_split": -0.1}, [],
                       "data_loader.args.validation_split", ["[0, 1)"]),
    "split count beyond the data": ({"data_loader.args.validation_split": 5000}, [],
                                    "data_loader.args.validation_split", ["1437"]),
    "zero batch size": ({"data_loader.args.batch_size": 0}, [], "data_loader.args.batch_size", ["positive"]),
    "malformed monitor": ({"trainer.monitor": "maximum val_accuracy"}, [], "trainer.monitor", ["'max <metric>'"]),
    "monitor of an unknown value": ({"trainer.monitor": "max val_acc"}, [], "trainer.monitor",
                                    ["did you mean 'val_accuracy'"]),
    "unknown arch type": ({"arch.type": "ResNt"}, [], "arch.type", ["did you mean 'ResNet'", "MLP"]),
    "unknown optimizer": ({"optimizer.type": "Adamm"}, [], "optimizer.type", ["did you mean 'Adam'", "SGD"]),
    "unknown loss": ({"loss": "cross_entropyy"}, [], "loss", ["did you mean 'cross_entropy'"]),
    "loss of the wrong type": ({"loss": 5}, [], "loss", ["a string or an object"]),
    "unknown metric": ({"metrics": ["accuracy", "acc"]}, [], "metrics.1", ["'acc'", "top_k_acc"]),
    "unknown scheduler": ({"lr_scheduler": {"type": "StepLRR", "args": {}}}, [], "lr_scheduler.type", ["StepLR"]),
    "unknown trainer type": ({"trainer.type": "Foo"}, [], "trainer.type", ["Trainer"]),
    "unknown arch argument": ({"arch.args.num_class": 10}, [], "arch.args.num_class",
                              ["did you mean 'num_classes'", "in_channels"]),
    "unknown dataset argument": ({"dataset.args.trian": True}, [], "dataset.args.trian", ["did you mean 'train'"]),
    "unknown optimizer argument": ({"optimizer.args.learning_rate": 0.1}, [], "optimizer.args.learning_rate",
                                   ["Adam does not accept", "lr"]),
    "required argument left out": ({"arch": {"type": "MLP", "args": {"num_classes": 10}}}, [],
                                   "arch.args.in_features", ["requires"]),
    "unknown transform": ({"dataset.args.train_transform": [{"type": "RandomFlipp"}]}, [],
                          "dataset.args.train_transform.0.type", ["RandomHorizontalFlip"]),
    "component without type": ({"optimizer": {"args": {"lr": 0.1}}}, [], "optimizer.type", ["required"]),
    "args not an object": ({"optimizer.args": [0.1]}, [], "optimizer.args", ["object"]),
    "unknown override path": ({}, ["trainer.epoh=3"], "trainer.epoh", ["did you mean 'epochs'", "+trainer.epoh"]),
    "override below a missing key": ({}, ["foo.bar=1"], "foo", ["no such key"]),
    "override of a list index": ({}, ["metrics.7=accuracy"], "metrics.7", ["list"]),
    "labels beyond num_classes": ({"arch.args.num_classes": 5}, [], "dataset", ["10 classes", "num_classes"]),
    "metric named like the loss": ({"metrics": [{"type": "accuracy", "name": "loss"}]}, [], "metrics.0.name",
                                   ["loss"]),
    "metric name not a string": ({"metrics": [{"type": "accuracy", "name": 5}]}, [], "metrics.0.name", ["5"]),
    "the same metric twice": ({"metrics": ["accuracy", "accuracy"]}, [], "metrics.1", ["two metrics"]),
    "name that leaves save_dir": ({"name": "../../escape"}, [], "name", ["folder name"]),
    "save_dir that is a file": ({"trainer.save_dir": __file__}, [], "trainer.save_dir", ["not a folder"]),
    "transform argument out of range": ({"dataset.args.train_transform": [
        {"type": "RandomRotation", "args": {"degrees": -5}}]}, [], "dataset.args.train_transform.0", ["positive"]),
    "transforms not a list": ({"dataset.args.train_transform": {"type": "RandomRotation"}}, [],
                              "dataset.args.train_transform", ["list"]),
    "transform step not an object": ({"dataset.args.train_transform": [5]}, [], "dataset.args.train_transform.0",
                                     ["type"]),
    "model that does not fit the data": ({"arch": {"type": "MLP", "args": {"in_features": 5, "num_classes": 10}}},
                                         [], "arch", ["batch of shape (64, 1, 8, 8)"]),
    "loss argument of the wrong type": ({"loss": {"type": "cross_entropy", "args": {"label_smoothing": "x"}}},
                                        [], "loss", ["label_smoothing"]),
    "metric argument of the wrong type": ({"metrics": ["accuracy", {"type": "top_k_acc", "args": {"k": "x"}}]}, [],
                                          "metrics", ["fail"]),
    "model argument that torch refuses": ({"arch": {"type": "MLP", "args": {"in_features": 64, "num_classes": 10,
                                                                            "hidden": [-1]}}}, [], "arch", ["MLP"]),
}


def write_config(tmp_path, changes: dict):
    path = make_config(tmp_path)
    config = json.loads(path.read_text())
    for dotted, value in changes.items():
        node, keys = config, dotted.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value is None:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("case", list(BROKEN_CONFIGS))
def test_broken_config(case, tmp_path, capsys):
    changes, extra, where, words = BROKEN_CONFIGS[case]
    config = write_config(tmp_path, changes)
    code, stderr = run_main(train.main, ["-c", str(config), *extra], capsys)
    assert_one_error(code, stderr, where, *words)
    assert not (tmp_path / "saved").exists(), "nothing is written for a bad config"


@pytest.mark.parametrize("name", ["os.system", "__import__", "_private", "__class__", "model.model.ResNet",
                                  "BaseModel", "torch", "nn", "__import__('os').system('touch x')"])
def test_unsafe_type_names_are_refused(name, tmp_path, capsys):
    config = write_config(tmp_path, {"arch.type": name})
    code, stderr = run_main(train.main, ["-c", str(config)], capsys)
    assert_one_error(code, stderr, "arch.type", "ResNet")


def test_no_code_runs_from_a_malicious_type_name(tmp_path, capsys):
    marker = tmp_path / "pwned"
    payloads = [f"__import__('os').system('touch {marker}')", "os.system", "system", "eval", "exec",
                "__builtins__", "getattr"]
    for section in ("arch", "optimizer", "dataset", "data_loader"):
        for payload in payloads:
            config = write_config(tmp_path, {f"{section}.type": payload})
            code, stderr = run_main(train.main, ["-c", str(config)], capsys)
            assert code == 2 and f"error: {section}.type" in stderr
    for payload in payloads:
        config = write_config(tmp_path, {"loss": payload, "metrics": [payload]})
        assert run_main(train.main, ["-c", str(config)], capsys)[0] == 2
        code, stderr = run_main(train.main, ["-c", str(make_config(tmp_path)),
                                             f'dataset.args.train_transform=[{{"type": "{payload}"}}]'], capsys)
        assert code == 2
    assert not marker.exists()


def test_invalid_json_names_line_and_column(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text('{\n  "name": "x",\n  "arch": {"type": "ResNet",}\n}\n')
    code, stderr = run_main(train.main, ["-c", str(path)], capsys)
    assert_one_error(code, stderr, f"{path}:3:", "invalid JSON")


@pytest.mark.parametrize("content", [b'{"name": "\xff\xfe"}', b"", b"[1, 2]"])
def test_unreadable_config_files(tmp_path, capsys, content):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    code, stderr = run_main(train.main, ["-c", str(path)], capsys)
    assert_one_error(code, stderr, "")


def test_config_path_that_is_a_folder(tmp_path, capsys):
    code, stderr = run_main(train.main, ["-c", str(tmp_path)], capsys)
    assert_one_error(code, stderr, str(tmp_path), "folder")


def test_run_id_that_leaves_save_dir(tmp_path, capsys):
    code, stderr = run_main(train.main, ["-c", str(make_config(tmp_path)), "--run-id", "../x"], capsys)
    assert_one_error(code, stderr, "--run-id", "folder name")


def test_missing_config_file(tmp_path, capsys):
    code, stderr = run_main(train.main, ["-c", str(tmp_path / "nope.json")], capsys)
    assert_one_error(code, stderr, str(tmp_path / "nope.json"), "not found")


@pytest.mark.parametrize("argv, where", [
    (["--bogus"], "command line"),
    (["--lr", "fast"], "command line"),
    ([], "command line"),
    (["-r", "does/not/exist"], "does/not/exist"),
    (["-r", "auto"], "-r auto"),
    (["trainer.epochs"], "command line"),
])
def test_bad_command_lines(argv, where, capsys):
    code, stderr = run_main(train.main, argv, capsys)
    assert_one_error(code, stderr, where)


def test_existing_run_id_is_refused(tmp_path, capsys):
    config = make_config(tmp_path)
    (tmp_path / "saved" / TINY_CONFIG["name"] / "taken").mkdir(parents=True)
    code, stderr = run_main(train.main, ["-c", str(config), "--run-id", "taken"], capsys)
    assert_one_error(code, stderr, "--run-id", "already exists")


def test_kfold_needs_two_folds(tmp_path, capsys):
    code, stderr = run_main(kfold_train.main, ["-c", str(make_config(tmp_path)), "--folds", "1"], capsys)
    assert_one_error(code, stderr, "kfold.n_splits", "2 or more")


def test_errors_from_a_real_process_have_no_traceback(tmp_path):
    config = write_config(tmp_path, {"trainer.epoch": 3})
    result = run_script("train.py", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: trainer.epoch: unknown key (did you mean 'epochs'?); known keys: "
        + ", ".join(__import__("utils.config.schema").config.schema.TRAINER)]


def test_debug_shows_the_traceback(tmp_path):
    config = write_config(tmp_path, {"trainer.epochs": 0})
    result = run_script("train.py", "-c", str(config), "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr
    # TEMPLATE_DEBUG=1 does the same: the error leaves run_cli, and Python prints its traceback.
    with pytest.raises(ConfigError, match="trainer.epochs"):
        run_in_process("train.py", "-c", str(config), env={"TEMPLATE_DEBUG": "1"})


def test_dry_run_builds_everything_and_writes_nothing(tmp_path):
    config = make_config(tmp_path)
    result = run_in_process("train.py", "-c", str(config), "--dry-run", check=True)
    assert not (tmp_path / "saved").exists()
    assert '"epochs": 2' in result.stdout, "the resolved config is printed"
    assert "Parameters:" in result.stdout and "output shape: (2, 10)" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert not any(REPO.glob("saved/Tiny*")), "nothing written in the repository either"


class Writes:
    """A stderr that records each write call."""
    def __init__(self):
        self.calls = []

    def write(self, text):
        self.calls.append(text)

    def flush(self):
        pass


def test_the_error_line_is_one_write_so_that_processes_sharing_stderr_cannot_run_lines_together(monkeypatch):
    # torchrun's processes write unbuffered to one pipe: a line written in two parts can be split by another's.
    def main():
        raise ConfigError("trainer.epochs", "must be positive")

    stderr = Writes()
    monkeypatch.setattr("sys.stderr", stderr)
    with pytest.raises(SystemExit):
        run_cli(main)
    assert stderr.calls == ["error: trainer.epochs: must be positive\n"]
