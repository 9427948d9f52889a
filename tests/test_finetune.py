"""Fine-tuning: pretrained backbones from weights files, freezing, parameter groups, warmup.

The weights files are made here from timm and torchvision models with random weights: nothing is
downloaded. Runs are in-process, on a few hundred digits resized to 3x16x16.
"""
import csv
import math

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

import train
from config_parser import ConfigParser
from tests.conftest import make_config, run_dirs
from tests.test_config_errors import assert_one_error, run_main
from tests.test_resume import assert_identical
from utils.seeding import seed_everything
from utils.util import read_json

RGB_16 = [{"type": "Resize", "args": {"size": 16, "antialias": True}}, {"type": "RGB"}]
SMALL_RGB_DIGITS = {"dataset.args.test_size": 0.8, "dataset.args.train_transform": RGB_16,
                    "dataset.args.eval_transform": RGB_16, "data_loader.args.batch_size": 32}


def timm_arch(weights_file=None, name: str = "test_resnet") -> dict:
    return {"type": "TimmModel", "args": {"model_name": name, "num_classes": 10, "weights_file": weights_file}}


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    """A test_resnet state_dict with an ImageNet head (1000 classes), as a .safetensors file."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "test_resnet.safetensors"
    torch.manual_seed(123)
    save_file(timm.create_model("test_resnet", num_classes=1000).state_dict(), path)
    return path


def load(path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def is_parameter(key: str) -> bool:
    return not key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def fresh_state(config_path, **changes) -> dict:
    """The weights train.py starts from for this config (seeded the same way), built but not trained."""
    config = ConfigParser(read_json(config_path), modification=changes)
    seed_everything(config["seed"])
    return {k: v.clone() for k, v in train.build_trainer(config).raw_model.state_dict().items()}


def run(config_path, *args) -> dict:
    train.main(["-c", str(config_path), *args])
    (run_dir,) = run_dirs(config_path.parent, read_json(config_path)["name"])
    return run_dir


# -- 1. backbones from weights files ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["timm", "torchvision"])
def test_weights_file_loads_the_backbone_and_keeps_a_fresh_head(tmp_path, timm_weights, capsys, kind):
    if kind == "timm":
        file, arch, head = timm_weights, timm_arch(str(timm_weights)), "fc"
    else:
        import torchvision

        file, head = tmp_path / "mobilenet.pth", "classifier.3"
        torch.save(torchvision.models.mobilenet_v3_small(num_classes=1000).state_dict(), file)
        arch = {"type": "TorchvisionModel", "args": {"name": "mobilenet_v3_small", "num_classes": 10,
                                                     "weights_file": str(file)}}
    weights = load(file) if file.suffix == ".pth" else load_file(file)
    config = make_config(tmp_path, **SMALL_RGB_DIGITS | {"arch": arch, "optimizer.args.lr": 0.0, "trainer.epochs": 1})
    trained = load(run(config) / "last.pth")["state_dict"]

    body = [k for k in weights if not k.startswith(f"{head}.") and is_parameter(k)]
    assert body and all(torch.equal(trained[f"model.{k}"], weights[k]) for k in body)
    fresh = fresh_state(config, **{"arch.args.weights_file": None})
    for key in (f"{head}.weight", f"{head}.bias"):
        assert trained[f"model.{key}"].shape[0] == 10 and weights[key].shape[0] == 1000
        assert torch.equal(trained[f"model.{key}"], fresh[f"model.{key}"])  # the fresh values, unchanged at lr 0
    assert f"kept fresh): {head}.bias, {head}.weight" in capsys.readouterr().out


def test_a_weights_file_with_code_in_it_is_refused(tmp_path, capsys):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    file = tmp_path / "evil.pth"
    torch.save({"fc.weight": Payload()}, file)
    config = make_config(tmp_path, **SMALL_RGB_DIGITS | {"arch": timm_arch(str(file))})
    code, stderr = run_main(train.main, ["-c", str(config), "--dry-run"], capsys)
    assert_one_error(code, stderr, str(file), "refused", "exec", "state_dict")
    assert not marker.exists()


def test_pretrained_offline_names_the_model_and_suggests_a_weights_file(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    arch = {"type": "TimmModel", "args": {"model_name": "test_resnet", "num_classes": 10, "pretrained": True}}
    config = make_config(tmp_path, **SMALL_RGB_DIGITS | {"arch": arch})
    code, stderr = run_main(train.main, ["-c", str(config), "--dry-run"], capsys)
    assert_one_error(code, stderr, "arch.args.pretrained", "test_resnet", "weights_file")


def test_dry_run_counts_backbone_and_head_parameters(tmp_path, capsys):
    import timm

    reference = timm.create_model("test_resnet", num_classes=10)
    head = reference.num_features * 10 + 10
    total = sum(p.numel() for p in reference.parameters())
    train.main(["-c", str(make_config(tmp_path, **SMALL_RGB_DIGITS | {"arch": timm_arch()})), "--dry-run"])
    assert f"Backbone parameters: {total - head:,}, head parameters: {head:,}" in capsys.readouterr().out


# -- 2. freezing -------------------------------------------------------------------------------------------
def test_frozen_backbone_trains_after_the_freeze_and_resumes_exactly(tmp_path, timm_weights):
    weights = load_file(timm_weights)
    config = make_config(tmp_path, **SMALL_RGB_DIGITS | {
        "arch": timm_arch(str(timm_weights)), "trainer.epochs": 2, "trainer.save_period": 1,
        "trainer.freeze_backbone_epochs": 1})
    run_dir = run(config)
    epoch1, epoch2 = load(run_dir / "checkpoint-epoch1.pth"), load(run_dir / "checkpoint-epoch2.pth")
    backbone = [k for k in weights if not k.startswith("fc.")]  # BatchNorm statistics included: frozen too
    assert all(torch.equal(epoch1["state_dict"][f"model.{k}"], weights[k]) for k in backbone)
    assert not torch.equal(epoch1["state_dict"]["model.fc.weight"],
                           fresh_state(config, **{"arch.args.weights_file": None})["model.fc.weight"])
    assert not any(torch.equal(epoch2["state_dict"][f"model.{k}"], weights[k]) for k in backbone if is_parameter(k))
    # The optimizer held every parameter from the start: resuming across the unfreeze is exact.
    train.main(["-r", str(run_dir / "checkpoint-epoch1.pth")])
    resumed = load(run_dir / "last.pth")
    for key in ("state_dict", "optimizer", "lr_scheduler", "global_step"):
        assert_identical(epoch2[key], resumed[key], key)
    assert {**epoch2["metrics"], "epoch_time": 0} == {**resumed["metrics"], "epoch_time": 0}


# -- 3. parameter groups and 4. warmup ------------------------------------------------------------------------
GROUPS = [{"match": "^head\\.", "name": "head", "lr": 0.01}]
SCHEDULE = {"type": "CosineAnnealingLR", "args": {"T_max": 18}, "interval": "step", "warmup": {"epochs": 1,
                                                                                             "start_factor": 0.1}}


def expected_lr(base: float, step: int, warmup: int = 18, start: float = 0.1, t_max: int = 18) -> float:
    """LinearLR from start * base to base over ``warmup`` steps, then cosine annealing to 0 over t_max."""
    if step < warmup:
        return base * (start + (1 - start) * step / warmup)
    return base * (1 + math.cos(math.pi * (step - warmup) / t_max)) / 2


def test_group_lrs_follow_warmup_and_schedule_whatever_the_accumulation(tmp_path):
    traces = {}
    hook = register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: trace.append([g["lr"] for g in optimizer.param_groups]))
    try:
        for batch, accumulation in ((64, 1), (32, 2)):
            folder = tmp_path / f"{batch}x{accumulation}"
            folder.mkdir()
            config = make_config(folder, **{"optimizer.args.lr": 0.001, "optimizer.param_groups": GROUPS,
                                            "lr_scheduler": SCHEDULE, "data_loader.args.batch_size": batch,
                                            "trainer.grad_accum_steps": accumulation, "trainer.epochs": 2})
            trace = traces[batch, accumulation] = []
            with open(run(config) / "metrics.csv", newline="") as file:
                rows = list(csv.DictReader(file))
            assert [float(row["lr_head"]) for row in rows] == [trace[0][0], trace[18][0]]
            assert [float(row["lr"]) for row in rows] == [float(row["lr_head"]) for row in rows]
            assert [float(row["lr_default"]) for row in rows] == [trace[0][1], trace[18][1]]
    finally:
        hook.remove()
    assert traces[64, 1] == traces[32, 2]  # the same optimizer steps, the same rates, bit for bit
    trace = traces[64, 1]
    assert len(trace) == 36  # 1,150 training digits: 18 optimizer steps per epoch either way
    for step, (head, default) in enumerate(trace):
        assert head == pytest.approx(expected_lr(0.01, step), rel=1e-9, abs=1e-15)
        assert default == pytest.approx(expected_lr(0.001, step), rel=1e-9, abs=1e-15)


def optimizer_for(model, **optimizer) -> torch.optim.Optimizer:
    from utils.recipe.param_groups import build_optimizer

    return build_optimizer({"optimizer": {"type": "AdamW", "args": {"lr": 0.001, "weight_decay": 0.05}} | optimizer},
                           model)


def group_of(optimizer, param) -> dict:
    (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return group


def test_param_groups_first_match_wins_and_norms_and_biases_get_no_decay():
    from model.model import ResNet

    model = ResNet([1, 1], widths=[8, 16], num_classes=10, in_channels=1)
    optimizer = optimizer_for(model, param_groups=[{"match": "head", "name": "head", "lr": 0.01},
                                                   {"match": "head|stem", "name": "stem", "lr": 0.002}])
    named = dict(model.named_parameters())
    expected = {"head.3.weight": ("head", 0.01, 0.05), "head.3.bias": ("head", 0.01, 0.0),
                "stem.0.weight": ("stem", 0.002, 0.05), "stem.1.weight": ("stem", 0.002, 0.0),
                "stages.0.residual.0.0.weight": ("default", 0.001, 0.05),
                "stages.0.residual.0.1.bias": ("default", 0.001, 0.0)}
    for name, (group_name, lr, decay) in expected.items():
        group = group_of(optimizer, named[name])
        assert (group["name"], group["lr"], group["weight_decay"]) == (group_name, lr, decay), name
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)
    everything = optimizer_for(model, no_decay_norm_and_bias=False)
    assert [g["weight_decay"] for g in everything.param_groups] == [0.05]


def test_layer_decay_scales_each_group_as_timm_does():
    import timm.optim

    from model.model import TimmModel

    model = TimmModel("test_vit", num_classes=10)
    optimizer = optimizer_for(model, layer_decay=0.7)
    reference = timm.optim.param_groups_layer_decay(model.model, weight_decay=0.05, layer_decay=0.7)
    assert len({g["lr_scale"] for g in reference}) > 3
    for group in reference:
        for param in group["params"]:
            ours = group_of(optimizer, param)
            assert ours["lr"] == pytest.approx(0.001 * group["lr_scale"], rel=1e-12)
            assert ours["weight_decay"] == group["weight_decay"]


def lr_trace(spec: dict, steps: int = 7) -> list[float]:
    from utils.recipe.schedulers import build_lr_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler({"lr_scheduler": spec}, optimizer, steps_per_epoch=5)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_nested_schedulers_and_epoch_warmup_are_built():
    constant_then_exponential = {"type": "SequentialLR", "args": {"milestones": [2], "schedulers": [
        {"type": "ConstantLR", "args": {"factor": 0.1, "total_iters": 2}},
        {"type": "ExponentialLR", "args": {"gamma": 0.9}}]}}
    warmed = constant_then_exponential | {"warmup": {"epochs": 2, "start_factor": 0.2}}
    # 2 warmup epochs from 0.2 to 1, then 0.1 for 2 epochs, then 0.9 ** k
    assert lr_trace(warmed) == pytest.approx([0.2, 0.6, 0.1, 0.1, 1.0, 0.9, 0.81], rel=1e-9)
    chained = {"type": "ChainedScheduler", "args": {"schedulers": [
        {"type": "ExponentialLR", "args": {"gamma": 0.5}},
        {"type": "ConstantLR", "args": {"factor": 0.1, "total_iters": 2}}]}}
    assert lr_trace(chained) == pytest.approx([0.5 ** k * (0.1 if k < 2 else 1) for k in range(7)], rel=1e-9)
