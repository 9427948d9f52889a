"""pseudo_labels (confident unlabelled samples added to training only), inference.py --probabilities,
students of every task, the warnings of both features, and README's chain from a k-fold teacher to a
distilled student, on iris, digits and small tables."""
import copy
import json
import re
import shlex

import numpy as np
import pandas as pd
import pytest

from tests.conftest import IRIS_CONFIG, REPO, make_config, run_dirs, run_in_process


def new_folder(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    from dataset.datasets import IrisDataset

    return tmp_path_factory.mktemp("iris"), IrisDataset(train=True), None


# -- pseudo-labels --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pseudo_kfold(iris):
    """A 2-fold run of iris with the iris test part's confident rows as pseudo-labels."""
    from dataset.datasets import IrisDataset

    folder, dataset, _ = iris
    unlabelled = IrisDataset(train=False)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([0.3] * 3, size=len(unlabelled))
    csv = folder / "test_probabilities.csv"
    pd.DataFrame({"id": range(len(unlabelled))} | {f"prob_{k}": probs[:, k] for k in range(3)}).to_csv(csv,
                                                                                                       index=False)
    pseudo = {"csv": str(csv), "dataset": {"type": "IrisDataset", "args": {"train": False}}, "threshold": 0.8,
              "weight": 0.5}
    config = make_config(new_folder(folder / "pseudo"), IRIS_CONFIG, pseudo_labels=pseudo)
    result = run_in_process("kfold_train.py", "-c", str(config), "--folds", "2", check=True)
    (run,) = run_dirs(folder / "pseudo", "TinyIris")
    return run, result, probs, len(dataset)


def test_pseudo_label_counts_in_the_log_equal_the_csvs_confident_rows(pseudo_kfold):
    run, result, probs, _ = pseudo_kfold
    confident = probs.max(axis=1) >= 0.8
    counts = np.bincount(probs[confident].argmax(axis=1), minlength=3)
    names = ["setosa", "versicolor", "virginica"]
    expected = ", ".join(f"{names[k]}: {counts[k]}" for k in range(3) if counts[k])
    assert f"added {confident.sum()} of {len(probs)} unlabelled samples" in result.stdout
    assert f"per class: {expected}" in result.stdout, result.stdout


def test_pseudo_labelled_samples_train_in_every_fold_and_are_never_validated(pseudo_kfold):
    run, result, probs, n_labelled = pseudo_kfold
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert sorted(oof["id"]) == list(range(n_labelled))  # every labelled sample once, nothing else
    for fold in (0, 1):
        held_out = json.loads((run / f"fold_{fold}" / "config.json").read_text())["data_loader"]["args"][
            "validation_split"]
        assert max(held_out) < n_labelled
    added = int((probs.max(axis=1) >= 0.8).sum())
    log = result.stdout
    for fold in (0, 1):  # each fold trains on the labelled samples it does not hold out, and every added one
        held_out = json.loads((run / f"fold_{fold}" / "config.json").read_text())["data_loader"]["args"][
            "validation_split"]
        assert (f"fold_{fold} ({fold + 1} of 2): {n_labelled - len(held_out) + added} training, {len(held_out)} "
                "held-out") in log


def test_pseudo_labelled_samples_stay_out_of_a_fractional_validation_split(pseudo_kfold):
    import train
    from config_parser import ConfigParser

    run, _, probs, n_labelled = pseudo_kfold
    config = json.loads((run / "config.json").read_text())
    trainer = train.build_trainer(ConfigParser(config | {"kfold": {}}))
    loader = trainer.data_loader
    added = int((probs.max(axis=1) >= 0.8).sum())
    assert len(loader.valid_indices) == round(0.2 * n_labelled) and max(loader.valid_indices) < n_labelled
    assert sorted(loader.train_indices) == sorted(set(range(n_labelled + added)) - set(loader.valid_indices))
    assert len(trainer.valid_data_loader.dataset.dataset) == n_labelled  # the labelled data's evaluation view


def test_pseudo_labels_change_refused_on_resume(pseudo_kfold):
    run, *_ = pseudo_kfold
    fold_run = run / "fold_0"
    result = run_in_process("train.py", "-r", str(fold_run), "pseudo_labels.threshold=0.95")
    assert result.returncode == 2 and "error: pseudo_labels.threshold: cannot change when resuming" in result.stderr


@pytest.mark.parametrize("task", ["multilabel", "multihead", "regression"])
def test_each_task_distills_from_its_kfold_oof_predictions(task, tmp_path):
    import tests.test_tasks as tasks

    config = getattr(tasks, f"{task}_config")(tmp_path, **{"trainer.epochs": 1})
    run_in_process("kfold_train.py", "-c", str(config), "--folds", "2", check=True)
    settings = json.loads(config.read_text())
    teacher = run_dirs(tmp_path, "Task")[0] / "oof_predictions.csv"  # prob_<label>, prob_<head>_<k>, prediction
    settings["loss"] = {"type": "distillation", "args": {"teacher": str(teacher), "base": settings["loss"]}}
    config.write_text(json.dumps(settings))
    run_in_process("train.py", "-c", str(config), check=True)


@pytest.mark.parametrize("key", ["loss.args.temperature", "pseudo_labels.threshold"])
def test_a_suspicious_value_is_a_warning_naming_its_key(key, caplog):
    from config_parser import ConfigParser

    config = copy.deepcopy(IRIS_CONFIG) | {"loss": {"type": "distillation", "args": {"teacher": "t.csv"}}}
    if key == "loss.args.temperature":
        config["loss"]["args"]["temperature"] = 0.5
    else:
        config["pseudo_labels"] = {"csv": "p.csv", "threshold": 0.3,
                                   "dataset": {"type": "IrisDataset", "args": {"train": False}}}
    with caplog.at_level("WARNING"):
        ConfigParser(config)
    assert key in caplog.text


# -- README's chain ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_readme_chain_teacher_probabilities_student_pseudo_labels_runs_in_order(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Distillation and pseudo-labels.*?```bash\n(.*?)```", readme, flags=re.S)[1]
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)  # saved/ is the test's own
    tiny = {"kfold_train.py": ["--folds", "2", "trainer.epochs=1", "arch.args.num_blocks=[1]", "arch.args.widths=[4]"],
            "train.py": ["trainer.epochs=1"], "inference.py": []}
    outputs = []
    for line in filter(None, map(str.strip, block.splitlines())):
        _, script, *args = shlex.split(line)
        result = run_in_process(script, *args, *tiny[script])
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        outputs.append(result.stdout)
    assert (tmp_path / "saved/Digits_Teacher/teacher/test_probabilities.csv").is_file()
    assert "pseudo_labels: added" in outputs[3]
    assert "accuracy" in outputs[4]


# -- inference.py --probabilities -----------------------------------------------------------------------
def test_probabilities_file_holds_the_ids_and_the_predictions_probabilities(iris):
    folder, _, _ = iris
    run_in_process("train.py", "-c", str(make_config(new_folder(folder / "infer"), IRIS_CONFIG)), check=True)
    (run,) = run_dirs(folder / "infer", "TinyIris")
    run_in_process("inference.py", "-r", str(run / "model_best.pth"), check=True)
    run_in_process("inference.py", "-r", str(run / "model_best.pth"), "--probabilities", check=True)
    predictions, probabilities = pd.read_csv(run / "predictions.csv"), pd.read_csv(run / "probabilities.csv")
    assert list(probabilities.columns) == ["id", "prob_0", "prob_1", "prob_2"]
    pd.testing.assert_frame_equal(probabilities, predictions[list(probabilities.columns)])
