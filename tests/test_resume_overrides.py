"""What a resumed run may change: optimizer arguments reach the restored optimizer's parameter groups,
``--lr`` keeps the ratios between the groups, and a change of the split is refused in one line.
One epoch of iris, resumed in this process for a second epoch with each change."""
import copy
import json
import shutil

import pytest
import torch

from tests.conftest import IRIS_CONFIG, make_config, run_dirs, run_in_process

BASE_LR, HEAD_LR = 0.01, 0.05
CONFIG = copy.deepcopy(IRIS_CONFIG)
# Two groups, the default one and the last Linear layer's, both with weight decay.
CONFIG["optimizer"] = {"type": "SGD", "args": {"lr": BASE_LR, "momentum": 0.5, "weight_decay": 1e-4},
                       "param_groups": [{"match": r"^net\.3\.", "name": "head", "lr": HEAD_LR}],
                       "no_decay_norm_and_bias": False}
CONFIG["trainer"]["epochs"] = 1


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("resume_overrides")
    run_in_process("train.py", "-c", str(make_config(tmp_path, CONFIG)), check=True)
    (run,) = run_dirs(tmp_path, "TinyIris")
    return run


def resumed(one_epoch, tmp_path, *changes: str, check: bool = True):
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    result = run_in_process("train.py", "-r", str(run), "trainer.epochs=2", *changes, check=check)
    return run, result


def groups_of(run) -> tuple[dict[str, dict], int]:
    """({group name: the optimizer's group}, epoch) of the run's last checkpoint."""
    checkpoint = torch.load(run / "last.pth", weights_only=True)
    return {group["name"]: group for group in checkpoint["optimizer"]["param_groups"]}, checkpoint["epoch"]


def test_the_run_has_two_groups_with_the_configured_rates(one_epoch):
    groups, epoch = groups_of(one_epoch)
    assert epoch == 1
    assert groups["head"]["lr"] == HEAD_LR and groups["default"]["lr"] == BASE_LR


def test_weight_decay_and_momentum_changed_on_resume_reach_every_group(one_epoch, tmp_path):
    run, _ = resumed(one_epoch, tmp_path, "optimizer.args.weight_decay=0.001", "optimizer.args.momentum=0.9")
    groups, epoch = groups_of(run)
    assert epoch == 2
    for name, group in groups.items():
        assert (group["weight_decay"], group["momentum"]) == (0.001, 0.9), name
    assert groups["head"]["lr"] == HEAD_LR and groups["default"]["lr"] == BASE_LR


def test_lr_on_resume_keeps_the_ratio_between_the_groups(one_epoch, tmp_path):
    """--lr X scales every group with a rate of its own by the same factor, as in a new run with --lr X."""
    run, _ = resumed(one_epoch, tmp_path, "--lr", "0.02")
    groups, epoch = groups_of(run)
    assert epoch == 2
    assert groups["default"]["lr"] == pytest.approx(0.02, rel=1e-12)
    assert groups["head"]["lr"] == pytest.approx(0.02 * HEAD_LR / BASE_LR, rel=1e-12)
    history = json.loads((run / "config.json").read_text())["resume_history"][-1]["changes"]
    assert history["optimizer.param_groups"]["to"][0]["lr"] == pytest.approx(0.1)


def test_an_lr_override_sets_the_default_group_alone(one_epoch, tmp_path):
    """optimizer.args.lr=X is the config's key: a group with a rate of its own keeps it, as in a new run."""
    run, _ = resumed(one_epoch, tmp_path, "optimizer.args.lr=0.02")
    groups, _ = groups_of(run)
    assert (groups["default"]["lr"], groups["head"]["lr"]) == (0.02, HEAD_LR)


@pytest.mark.parametrize("change", ["+data_loader.args.stratify=false", "+data_loader.args.group_split=false"])
def test_a_change_of_the_split_is_refused_in_one_line(one_epoch, tmp_path, change):
    run, result = resumed(one_epoch, tmp_path, change, check=False)
    key = change.strip("+").split("=")[0]
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {key}: cannot change when resuming"), result.stderr
    assert "Traceback" not in result.stderr
    assert groups_of(run)[1] == 1, "nothing was trained"
