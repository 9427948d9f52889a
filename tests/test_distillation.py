"""The distillation loss (a teacher's soft labels matched to samples by id), pseudo-labels and
inference.py --probabilities, on iris and digits with tiny MLPs."""
import copy
import json
import signal

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.special import softmax
from scipy.stats import entropy

from tests.conftest import (
    IRIS_CONFIG,
    REPO,
    TINY_CONFIG,
    assert_same_tensors,
    launch,
    make_config,
    run_dirs,
    run_in_process,
    run_script,
)
from utils.data.train_targets import ExtrasLoss, TrainTarget
from utils.recipe.distillation import softmax_kl
from utils.recipe.mixup import BatchMixer

DIGITS_MLP = copy.deepcopy(TINY_CONFIG)
DIGITS_MLP["arch"] = {"type": "MLP", "args": {"in_features": 64, "num_classes": 10, "hidden": [16]}}
DIGITS_MLP["trainer"] |= {"save_period": 0, "monitor": "min val_loss"}


def teacher_of(features: torch.Tensor, classes: int = 3) -> np.ndarray:
    """A teacher whose soft labels are a function of each sample's inputs: a batch shows whether its
    rows are its own samples' (whatever the order of the CSV)."""
    return softmax(features.reshape(len(features), -1)[:, :classes].double().numpy() * 3, axis=1)


def write_teacher(path, dataset, shuffle_seed: int = 0, drop: int | None = None, classes: int = 3) -> str:
    features = torch.stack([dataset.evaluation()[i][0] for i in range(len(dataset))])
    probs = teacher_of(features, classes)
    table = pd.DataFrame({"id": [dataset.sample_id(i) for i in range(len(dataset))], "prediction": probs.argmax(1)}
                         | {f"prob_{k}": probs[:, k] for k in range(classes)})
    if drop is not None:
        table = table.drop(index=drop)
    table.sample(frac=1.0, random_state=shuffle_seed).to_csv(path, index=False)  # rows in another order
    return str(path)


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    from dataset.datasets import IrisDataset

    folder = tmp_path_factory.mktemp("iris")
    dataset = IrisDataset(train=True)
    return folder, dataset, write_teacher(folder / "teacher.csv", dataset)


def new_folder(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def distill_config(folder, teacher: str, base: dict = IRIS_CONFIG, **args):
    loss = {"type": "distillation", "args": {"teacher": teacher, "alpha": 0.5, "temperature": 4.0} | args}
    return make_config(new_folder(folder), base, loss=loss)


# -- the loss -------------------------------------------------------------------------------------------
def test_kl_term_equals_hinton_by_hand():
    torch.manual_seed(0)
    student, teacher_logits, temperature = torch.randn(5, 4), torch.randn(5, 4) * 2, 3.0
    teacher = teacher_logits.softmax(dim=1)
    expected = [temperature ** 2 * entropy(softmax(t / temperature), softmax(s / temperature))
                for s, t in zip(student.double().numpy(), teacher_logits.double().numpy())]
    np.testing.assert_allclose(softmax_kl(student, teacher, temperature).numpy(), expected, rtol=1e-5)


def test_multilabel_term_is_the_binary_kl_of_each_label_by_hand():
    from model.task import MultiLabel

    torch.manual_seed(1)
    student, teacher_logits, temperature = torch.randn(4, 3), torch.randn(4, 3), 2.0
    p = 1 / (1 + np.exp(-teacher_logits.double().numpy() / temperature))
    q = 1 / (1 + np.exp(-student.double().numpy() / temperature))
    expected = temperature ** 2 * (p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))).mean(axis=1)
    actual = MultiLabel().soft_target_loss(student, teacher_logits.sigmoid(), temperature)
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-4)


def test_multihead_term_is_each_heads_kl_with_its_weight():
    from model.task import MultiHead

    torch.manual_seed(5)
    task = MultiHead({"a": 2, "b": 3}, weights={"b": 2.0})
    student, teacher_logits, temperature = torch.randn(4, 5), torch.randn(4, 5), 3.0
    teacher = torch.cat([teacher_logits[:, :2].softmax(1), teacher_logits[:, 2:].softmax(1)], dim=1)
    s, t = student.double().numpy() / temperature, teacher_logits.double().numpy() / temperature
    expected = [temperature ** 2 * (entropy(softmax(ti[:2]), softmax(si[:2])) + 2 * entropy(softmax(ti[2:]),
                                                                                           softmax(si[2:])))
                for si, ti in zip(s, t)]
    np.testing.assert_allclose(task.soft_target_loss(student, teacher, temperature).numpy(), expected, rtol=1e-5)


def test_regression_learns_the_teachers_predictions_by_squared_error():
    from model.task import Regression

    student, teacher = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([[0.5, 2.0], [2.0, 1.0]])
    np.testing.assert_allclose(Regression().soft_target_loss(student, teacher, 4.0).numpy(), [0.125, 4.0])


def test_loss_mixes_the_true_labels_and_the_teacher_with_alpha():
    from base.base_task import BaseTask

    torch.manual_seed(2)
    output, labels, teacher = torch.randn(6, 3), torch.randint(0, 3, (6,)), torch.rand(6, 3).softmax(dim=1)
    target = TrainTarget(labels, teacher, torch.zeros(6, 0), torch.ones(6))
    loss = ExtrasLoss(F.cross_entropy, BaseTask(), alpha=0.3, temperature=2.0)(output, target)
    kl = F.kl_div((output / 2).log_softmax(1), (teacher.log() / 2).softmax(1), reduction="batchmean") * 4
    torch.testing.assert_close(loss, 0.3 * F.cross_entropy(output, labels) + 0.7 * kl)
    # Validation and inference targets carry no teacher: the loss on the true labels alone.
    torch.testing.assert_close(ExtrasLoss(F.cross_entropy, BaseTask(), 0.3, 2.0)(output, labels),
                               F.cross_entropy(output, labels))


def test_pseudo_label_weight_scales_each_samples_loss():
    from base.base_task import BaseTask

    torch.manual_seed(3)
    output, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    weight = torch.tensor([1.0, 1.0, 0.5, 0.5])
    target = TrainTarget(labels, torch.zeros(4, 0), torch.zeros(4, 0), weight)
    loss = ExtrasLoss(F.cross_entropy, BaseTask(), weighted=True)(output, target)
    per_sample = F.cross_entropy(output, labels, reduction="none")
    torch.testing.assert_close(loss, (per_sample * weight).mean())


def test_soft_pseudo_labels_are_the_loss_target():
    from base.base_task import BaseTask

    torch.manual_seed(6)
    output, labels, soft = torch.randn(4, 3), torch.tensor([0, 2, 1, 1]), torch.rand(4, 3).softmax(dim=1)
    target = TrainTarget(labels, torch.zeros(4, 0), soft, torch.ones(4))
    loss = ExtrasLoss(F.cross_entropy, BaseTask())(output, target)
    expected = -(soft * output.log_softmax(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("batch_idx", range(3))
@pytest.mark.parametrize(("mixup_alpha", "cutmix_alpha"), [(0.8, 0.0), (0.0, 1.0)], ids=["MixUp", "CutMix"])
def test_mixup_mixes_the_teacher_rows_with_the_labels_pairs_and_lambda(mixup_alpha, cutmix_alpha, batch_idx):
    mixer = BatchMixer(num_classes=5, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=0.0,
                       seed=4)
    data, target = torch.rand(8, 1, 6, 6), torch.randint(0, 5, (8,))
    # One-hot rows mixed as the labels are must come out as the mixed labels themselves.
    rows = torch.cat([F.one_hot(target, 5).float(), torch.arange(8.0).unsqueeze(1)], dim=1)
    mixed_data, soft, mixed_rows = mixer(data, target, epoch=1, batch_idx=batch_idx, rows=rows)
    torch.testing.assert_close(mixed_rows[:, :5], soft)
    assert torch.equal(mixed_data, mixer(data, target, epoch=1, batch_idx=batch_idx)[0])
    if not torch.equal(mixed_data, data):
        assert not torch.equal(mixed_rows[:, 5], rows[:, 5]), "the rows were not mixed"


# -- the teacher's rows, by id --------------------------------------------------------------------------
def test_each_batch_gets_its_own_samples_teacher_rows(iris, monkeypatch):
    from trainer.trainer import Trainer

    folder, _, teacher = iris
    seen = []

    def train_step(self, data, target):
        seen.append(torch.allclose(target.teacher.double(), torch.as_tensor(teacher_of(data)), atol=1e-6))
        return Trainer._train_step.__wrapped__(self, data, target)

    train_step.__wrapped__ = Trainer._train_step
    monkeypatch.setattr(Trainer, "_train_step", train_step)
    run_in_process("train.py", "-c", str(distill_config(folder / "rows", teacher)), check=True)
    assert len(seen) == 3 * 6 and all(seen)  # 3 epochs of 6 batches


CHECK_ROWS = """
import json, os, runpy, sys
sys.path.insert(0, {repo!r})
import numpy as np
from scipy.special import softmax
from trainer.trainer import Trainer

checked, original = [], Trainer._train_step


def train_step(self, data, target):  # every batch of this process: its rows are its samples' own
    expected = softmax(data.reshape(len(data), -1)[:, :3].double().numpy() * 3, axis=1)
    checked.append(bool(np.allclose(target.teacher.double().numpy(), expected, atol=1e-6)))
    return original(self, data, target)


Trainer._train_step = train_step
sys.argv = ["train.py", *sys.argv[1:]]
try:
    runpy.run_path({train!r}, run_name="__main__")
finally:
    with open(os.path.join({folder!r}, "rank" + os.environ["RANK"] + ".json"), "w") as file:
        json.dump(checked, file)
"""


@pytest.mark.slow
def test_under_torchrun_each_process_gets_its_own_samples_teacher_rows(iris):
    folder, _, teacher = iris
    folder = new_folder(folder / "ddp")
    script = folder / "check_rows.py"
    script.write_text(CHECK_ROWS.format(repo=str(REPO), train=str(REPO / "train.py"), folder=str(folder)))
    config = distill_config(folder, teacher)  # 96 training samples: 6 batches of 8 per process and epoch
    run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), "-c", str(config),
               "data_loader.args.batch_size=8", check=True, timeout=240)
    for rank in (0, 1):
        checked = json.loads((folder / f"rank{rank}.json").read_text())
        assert len(checked) == 3 * 6 and all(checked), (rank, checked)


def test_alpha_one_trains_exactly_as_the_plain_loss(iris):
    folder, _, teacher = iris
    run_in_process("train.py", "-c", str(make_config(new_folder(folder / "plain"), IRIS_CONFIG)), check=True)
    run_in_process("train.py", "-c", str(distill_config(folder / "alpha1", teacher, alpha=1.0)), check=True)
    (plain,), (distilled,) = run_dirs(folder / "plain", "TinyIris"), run_dirs(folder / "alpha1", "TinyIris")
    load = lambda run: torch.load(run / "last.pth", weights_only=True)["state_dict"]  # noqa: E731
    assert_same_tensors(load(plain), load(distilled))


@pytest.mark.parametrize(("change", "message"), [
    ({"drop": 7}, "has no row for training sample"),
    ({"classes": 2}, "has 2 soft-label columns"),
])
def test_a_teacher_without_a_training_id_or_with_other_classes_is_one_error_line(iris, change, message):
    folder, dataset, _ = iris
    teacher = write_teacher(folder / f"bad_{len(change)}_{message[:6]}.csv", dataset, **change)
    result = run_in_process("train.py", "-c", str(distill_config(folder / "bad", teacher)))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: loss.args.teacher:") and message in lines[0], lines


@pytest.mark.parametrize(("args", "where"), [({"alpha": 1.5}, "loss.args.alpha"),
                                             ({"temperature": 0}, "loss.args.temperature")])
def test_alpha_and_temperature_out_of_range_are_one_error_line(iris, args, where):
    folder, _, teacher = iris
    result = run_in_process("train.py", "-c", str(distill_config(folder / "range", teacher, **args)), "--dry-run")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {where}:"), lines


def test_another_teacher_is_refused_on_resume_and_alpha_may_change(iris):
    folder, dataset, teacher = iris
    run_in_process("train.py", "-c", str(distill_config(folder / "resume", teacher)), check=True)
    (run,) = run_dirs(folder / "resume", "TinyIris")
    other = write_teacher(folder / "other.csv", dataset, shuffle_seed=1)
    refused = run_in_process("train.py", "-r", str(run), f"loss.args.teacher={other}", "trainer.epochs=4")
    assert refused.returncode == 2 and "error: loss.args.teacher: cannot change when resuming" in refused.stderr
    changed = run_in_process("train.py", "-r", str(run), "loss.args.alpha=0.2", "trainer.epochs=4", check=True)
    assert "loss.args.alpha changed at epoch 4: 0.5 -> 0.2" in changed.stdout + changed.stderr


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_equals_the_uninterrupted_distillation_run(tmp_path):
    from dataset.datasets import DigitsDataset

    teacher = write_teacher(tmp_path / "teacher.csv", DigitsDataset(train=True), classes=10)
    changes = {"loss": {"type": "distillation", "args": {"teacher": teacher}},
               "trainer.mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}, "data_loader.args.batch_size": 32}
    reference = make_config(new_folder(tmp_path / "reference"), DIGITS_MLP, **changes)
    run_in_process("train.py", "-c", str(reference), check=True)
    stopped = make_config(new_folder(tmp_path / "stopped"), DIGITS_MLP, **changes)
    # 1,150 training digits in batches of 32: 36 per epoch; the signal comes in epoch 2's 10th batch.
    result = launch("train.py", "-c", str(stopped), faults={"LAUNCH_SIGNALS": f"{signal.SIGTERM.value}@46"},
                    env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    (run,) = run_dirs(tmp_path / "stopped")
    assert 0 < torch.load(run / "last.pth", weights_only=True)["batches_done"] < 36
    run_in_process("train.py", "-r", str(run), check=True)
    (expected,) = run_dirs(tmp_path / "reference")
    load = lambda run: torch.load(run / "last.pth", weights_only=True)  # noqa: E731
    assert_same_tensors(load(expected)["state_dict"], load(run)["state_dict"])
    assert_same_tensors(load(expected)["optimizer"]["state"][0], load(run)["optimizer"]["state"][0])
