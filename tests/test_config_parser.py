"""ConfigParser: reading values, defaults, command-line overrides, building objects, and the run directory."""
import copy
import json
import logging
import os
from datetime import datetime as real_datetime
from functools import partial

import pytest
import torch

import data_loader.data_loaders as module_data
import model.loss as module_loss
import model.metric as module_metric
import model.model as module_arch
import utils.checkpoint.runs
from base import Metric
from config_parser import ConfigParser, training_arguments
from dataset.datasets import IrisDataset
from logger.logger import setup_logging
from tests.conftest import IRIS_CONFIG, TINY_CONFIG, make_config
from utils.config.overrides import apply_modifications, parse_overrides
from utils.errors import CheckpointError, ConfigError


def iris(tmp_path, **changes) -> dict:
    """IRIS_CONFIG with save_dir in tmp_path/saved and dotted-path changes."""
    config = copy.deepcopy(IRIS_CONFIG)
    config["trainer"]["save_dir"] = str(tmp_path / "saved")
    apply_modifications(config, {f"+{k}": v for k, v in changes.items()})
    return config


def from_argv(config_path, *argv) -> ConfigParser:
    parser = training_arguments("test", resume_help="resume")
    return ConfigParser.from_args(parser, argv=["-c", str(config_path), *argv])


@pytest.fixture
def restore_logging():
    """start_run() adds a file handler in tmp_path to the root logger: take it away afterwards."""
    yield
    setup_logging(None, 1)


# -- reading values and defaults ---------------------------------------------------------------------
def test_getitem_and_contains(tmp_path):
    config = ConfigParser(iris(tmp_path))
    assert config["name"] == "TinyIris"
    assert config["optimizer"]["args"]["lr"] == 0.1
    assert config["trainer"]["epochs"] == 3
    assert "optimizer" in config
    assert "lr_scheduler" not in config  # a default of None counts as absent
    assert "no_such_section" not in config
    with pytest.raises(KeyError):
        config["no_such_section"]


def test_defaults_are_filled_in(tmp_path):
    config = ConfigParser(iris(tmp_path))
    trainer = config["trainer"]
    assert trainer["amp"] is False
    assert trainer["grad_accum_steps"] == 1
    assert trainer["grad_clip_norm"] is None
    assert trainer["compile"] is False
    assert trainer["channels_last"] is False
    assert trainer["type"] == "Trainer"
    assert config["wandb"]["enabled"] is False
    assert config["wandb"]["mode"] == "offline"
    assert config["kfold"]["n_splits"] == 5
    assert config["deterministic"] is False
    assert config["lr_scheduler"] is None
    # Values given in the config are kept, not replaced by defaults.
    assert trainer["monitor"] == "min val_loss"
    assert trainer["save_period"] == 0


def test_the_given_dict_is_not_modified(tmp_path):
    raw = iris(tmp_path)
    before = copy.deepcopy(raw)
    ConfigParser(raw, modification={"trainer.epochs": 9})
    assert raw == before


# -- overrides ---------------------------------------------------------------------------------------
def test_parse_overrides_reads_json_else_keeps_strings():
    parsed = parse_overrides([
        "trainer.epochs=7", "optimizer.args.lr=1e-3", "trainer.tensorboard=true", "lr_scheduler=null",
        "arch.args.hidden=[8, 4]", "optimizer.type=SGD", "name=my run", "+optimizer.args.weight_decay=0.5",
        "trainer.monitor=max val_accuracy", "wandb.name=a=b",
    ])
    assert parsed == {
        "trainer.epochs": 7, "optimizer.args.lr": 1e-3, "trainer.tensorboard": True, "lr_scheduler": None,
        "arch.args.hidden": [8, 4], "optimizer.type": "SGD", "name": "my run",
        "+optimizer.args.weight_decay": 0.5, "trainer.monitor": "max val_accuracy", "wandb.name": "a=b",
    }
    assert isinstance(parsed["trainer.epochs"], int)
    assert parsed["trainer.tensorboard"] is True


@pytest.mark.parametrize("item", ["trainer.epochs", "=3", "+=3"])
def test_parse_overrides_refuses_items_without_a_path_or_value(item):
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        parse_overrides([item])


def test_apply_modifications_sets_nested_values_and_list_entries():
    config = {"trainer": {"epochs": 3}, "metrics": ["accuracy", "top_k_acc"]}
    apply_modifications(config, {"trainer.epochs": 5, "metrics.1": "MacroF1"})
    assert config == {"trainer": {"epochs": 5}, "metrics": ["accuracy", "MacroF1"]}


def test_apply_modifications_plus_adds_keys_with_missing_parents():
    config = {"optimizer": {"type": "SGD", "args": {"lr": 0.1}}}
    apply_modifications(config, {"+optimizer.args.momentum": 0.9, "+extra.deep.key": [1]})
    assert config["optimizer"]["args"] == {"lr": 0.1, "momentum": 0.9}
    assert config["extra"] == {"deep": {"key": [1]}}


def test_apply_modifications_copies_values():
    value = {"a": [1, 2]}
    config = {"x": None}
    apply_modifications(config, {"x": value})
    value["a"].append(3)
    assert config["x"] == {"a": [1, 2]}


def test_unknown_path_is_an_error_naming_the_path_with_a_suggestion():
    config = {"trainer": {"epochs": 3}}
    with pytest.raises(ConfigError) as error:
        apply_modifications(config, {"trainer.epoch": 5})
    assert error.value.where == "trainer.epoch"
    assert "did you mean 'epochs'" in str(error.value)
    assert "+trainer.epoch" in str(error.value)  # tells how to add it instead
    assert config == {"trainer": {"epochs": 3}}


def test_list_index_out_of_range_is_an_error():
    with pytest.raises(ConfigError) as error:
        apply_modifications({"metrics": ["accuracy"]}, {"metrics.3": "MacroF1"})
    assert error.value.where == "metrics.3"
    with pytest.raises(ConfigError):
        apply_modifications({"metrics": ["accuracy"]}, {"metrics.first": "MacroF1"})


def test_from_args_applies_overrides(tmp_path):
    path = make_config(tmp_path, IRIS_CONFIG)
    config = from_argv(path, "trainer.epochs=7", "optimizer.args.lr=0.5", "metrics.0=MacroF1",
                       "trainer.monitor=max val_MacroF1", "+optimizer.args.momentum=0.9", "trainer.amp=bf16")
    assert config["trainer"]["epochs"] == 7
    assert config["optimizer"]["args"] == {"lr": 0.5, "momentum": 0.9}
    assert config["metrics"] == ["MacroF1"]
    assert config["trainer"]["monitor"] == "max val_MacroF1"
    assert config["trainer"]["amp"] == "bf16"  # a default key can be overridden without "+"
    # The file itself is unchanged.
    assert json.loads(path.read_text())["trainer"]["epochs"] == 3


def test_from_args_overrides_may_be_mixed_with_options(tmp_path):
    path = make_config(tmp_path, IRIS_CONFIG)
    parser = training_arguments("test", resume_help="resume")
    config = ConfigParser.from_args(parser, argv=["trainer.epochs=4", "-c", str(path), "--lr", "0.25",
                                                  "seed=9"])
    assert (config["trainer"]["epochs"], config["seed"], config["optimizer"]["args"]["lr"]) == (4, 9, 0.25)


def test_from_args_unknown_path_is_a_config_error(tmp_path):
    path = make_config(tmp_path, IRIS_CONFIG)
    with pytest.raises(ConfigError) as error:
        from_argv(path, "optimizer.args.lrr=0.5")
    assert error.value.where == "optimizer.args.lrr"
    assert "did you mean 'lr'" in str(error.value)


def test_lr_and_bs_options(tmp_path):
    path = make_config(tmp_path, IRIS_CONFIG)
    config = from_argv(path, "--lr", "0.003", "--bs", "8")
    assert config["optimizer"]["args"]["lr"] == 0.003
    assert config["data_loader"]["args"]["batch_size"] == 8
    assert isinstance(config["data_loader"]["args"]["batch_size"], int)
    long_names = from_argv(path, "--learning_rate", "0.2", "--batch_size", "4")
    assert long_names["optimizer"]["args"]["lr"] == 0.2
    assert long_names["data_loader"]["args"]["batch_size"] == 4
    untouched = from_argv(path)
    assert untouched["optimizer"]["args"]["lr"] == 0.1
    assert untouched["data_loader"]["args"]["batch_size"] == 16


def test_lr_option_adds_the_key_when_the_config_has_none(tmp_path):
    path = make_config(tmp_path, IRIS_CONFIG, **{"optimizer.args": {}})
    assert from_argv(path, "--lr", "0.04")["optimizer"]["args"] == {"lr": 0.04}


def test_from_args_without_a_config_is_an_error():
    with pytest.raises(ConfigError, match="-c"):
        ConfigParser.from_args(training_arguments("test", resume_help="resume"), argv=[])


# -- building objects --------------------------------------------------------------------------------
def test_init_obj_builds_the_named_class_with_its_args(tmp_path):
    config = ConfigParser(iris(tmp_path, **{"arch.args.hidden": [7, 5]}))
    model = config.init_obj("arch", module_arch)
    assert isinstance(model, module_arch.MLP)
    assert model(torch.zeros(2, 4)).shape == (2, 3)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linear] == [7, 5, 3]

    optimizer = config.init_obj("optimizer", torch.optim, model.parameters())
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["lr"] == 0.1
    # Keyword arguments given in the call win over the config's.
    optimizer = config.init_obj("optimizer", torch.optim, model.parameters(), lr=0.7)
    assert optimizer.param_groups[0]["lr"] == 0.7


def test_init_ftn_with_a_loss_name(tmp_path):
    config = ConfigParser(iris(tmp_path))
    loss = config.init_ftn("loss", module_loss)
    assert isinstance(loss, partial)
    output, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.allclose(loss(output, target), torch.nn.functional.cross_entropy(output, target))


def test_init_ftn_with_type_and_args(tmp_path):
    config = ConfigParser(iris(tmp_path, loss={"type": "cross_entropy", "args": {"label_smoothing": 0.3}}))
    loss = config.init_ftn("loss", module_loss)
    output, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = torch.nn.functional.cross_entropy(output, target, label_smoothing=0.3)
    assert torch.allclose(loss(output, target), expected)
    assert not torch.allclose(loss(output, target), torch.nn.functional.cross_entropy(output, target))


def test_init_data_loader_builds_the_dataset_and_passes_the_seed(tmp_path):
    config = ConfigParser(iris(tmp_path, seed=123))
    loader = config.init_data_loader("data_loader", module_data)
    assert isinstance(loader, module_data.IrisDataLoader)
    assert isinstance(loader.dataset, IrisDataset)
    assert loader.batch_size == 16
    assert loader.epoch_sampler.seed == 123
    assert len(loader.valid_indices) == round(len(loader.dataset) * 0.2)


def test_init_data_loader_uses_a_given_dataset(tmp_path):
    config = ConfigParser(iris(tmp_path))
    dataset = IrisDataset(train=False)
    loader = config.init_data_loader("data_loader", module_data, dataset=dataset)
    assert loader.dataset is dataset


def test_init_metrics(tmp_path):
    config = ConfigParser(iris(tmp_path, metrics=["accuracy", {"type": "top_k_acc", "args": {"k": 2}},
                                                  {"type": "MacroF1", "name": "f1"}]))
    metrics = config.init_metrics(module_metric)
    assert list(metrics) == ["accuracy", "top_k_acc", "f1"]
    assert isinstance(metrics["f1"], module_metric.MacroF1) and isinstance(metrics["f1"], Metric)
    output = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    target = torch.tensor([1, 2])
    assert metrics["accuracy"](output, target).item() == 0.0
    assert metrics["top_k_acc"](output, target).item() == 0.5  # k=2 from the config, not the default 3


def test_unknown_type_is_refused_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError) as error:
        ConfigParser(iris(tmp_path, **{"arch.type": "MPL"}))
    assert error.value.where == "arch.type"
    assert "did you mean 'MLP'" in str(error.value)


# -- no side effects; the run directory ---------------------------------------------------------------
def test_creating_a_config_parser_writes_nothing(tmp_path):
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    path = config_dir / "config.json"
    path.write_text(json.dumps(iris(tmp_path / "out")))
    ConfigParser(iris(tmp_path / "out"), modification={"trainer.epochs": 2})
    from_argv(path, "trainer.epochs=2")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.json", "configs"]
    assert not (tmp_path / "out").exists()


def test_start_run_creates_the_run_directory_with_the_resolved_config(tmp_path, restore_logging):
    config = ConfigParser(iris(tmp_path), modification={"trainer.epochs": 11})
    assert config.save_dir is None and config.log_dir is None
    run_dir = config.start_run()
    assert run_dir.parent == tmp_path / "saved" / "TinyIris"
    assert run_dir.is_dir()
    assert config.save_dir == run_dir and config.log_dir == run_dir
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved == config.config
    assert saved["trainer"]["epochs"] == 11
    assert saved["trainer"]["amp"] is False  # the resolved config, defaults included
    # The run id is a timestamp.
    real_datetime.strptime(run_dir.name[:15], "%Y%m%d_%H%M%S")


def test_two_runs_in_the_same_second_get_different_directories(tmp_path, monkeypatch, restore_logging):
    class FrozenDatetime(real_datetime):
        @classmethod
        def now(cls, tz=None):
            return real_datetime(2030, 1, 2, 3, 4, 5)

    monkeypatch.setattr(utils.checkpoint.runs, "datetime", FrozenDatetime)
    first = ConfigParser(iris(tmp_path)).start_run()
    second = ConfigParser(iris(tmp_path)).start_run()
    third = ConfigParser(iris(tmp_path)).start_run()
    assert len({first, second, third}) == 3
    assert first.name == "20300102_030405"
    for run_dir in (first, second, third):
        assert (run_dir / "config.json").is_file()


def test_explicit_run_id(tmp_path, restore_logging):
    run_dir = ConfigParser(iris(tmp_path), run_id="baseline").start_run()
    assert run_dir == tmp_path / "saved" / "TinyIris" / "baseline"
    assert (run_dir / "config.json").is_file()
    with pytest.raises(ConfigError) as error:
        ConfigParser(iris(tmp_path), run_id="baseline")
    assert "already exists" in str(error.value)
    assert error.value.where == "--run-id"


def test_run_id_from_the_command_line(tmp_path, restore_logging):
    path = make_config(tmp_path, TINY_CONFIG)
    config = from_argv(path, "--run-id", "first")
    assert config.start_run() == tmp_path / "saved" / "Tiny" / "first"
    with pytest.raises(ConfigError):
        from_argv(path, "--run-id", "first")


# -- loggers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("verbosity, level", [(0, logging.WARNING), (1, logging.INFO), (2, logging.DEBUG)])
def test_get_logger_levels(tmp_path, verbosity, level):
    config = ConfigParser(iris(tmp_path))
    logger = config.get_logger(f"test_config_parser.{verbosity}", verbosity)
    assert logger.level == level
    assert logger.name == f"test_config_parser.{verbosity}"


def test_get_logger_default_verbosity_comes_from_the_config(tmp_path):
    config = ConfigParser(iris(tmp_path, **{"trainer.verbosity": 2}))
    assert config.get_logger("test_config_parser.default").level == logging.DEBUG


def test_get_logger_refuses_an_unknown_verbosity(tmp_path):
    config = ConfigParser(iris(tmp_path))
    with pytest.raises(ConfigError, match="verbosity"):
        config.get_logger("test_config_parser.bad", 3)


@pytest.mark.parametrize("script", ["train", "kfold_train", "inference"])
def test_device_option_sets_cuda_visible_devices(script, tmp_path, monkeypatch, restore_logging):
    """`-d 1,0` selects the GPUs of the run, before anything touches CUDA: each script sets the variable."""
    import importlib

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "unchanged")
    main = importlib.import_module(script).main
    if script == "inference":
        with pytest.raises(CheckpointError):  # the variable is set first, then the checkpoint is looked for
            main(["--resume", str(tmp_path / "missing.pth"), "-d", "1,0"])
    else:
        main(["-c", str(make_config(tmp_path, IRIS_CONFIG)), "--device", "1,0", "--dry-run"])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1,0"


def test_deterministic_switches_torch_determinism_on_and_off():
    from utils.seeding import configure_determinism

    try:
        configure_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        configure_determinism(False)
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
