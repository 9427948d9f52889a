"""inference.py (README "Inference and submissions"): predictions.csv, scores that
equal validation, unlabelled image folders, ensembles, test-time augmentation and its errors."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from base import BaseTask
from dataset.datasets import DigitsDataset
from kfold_train import make_folds
from tests.conftest import IRIS_CONFIG, make_config, run_dirs, run_in_process, run_script
from utils.predict import predict

DIGIT_PROBS = [f"prob_{c}" for c in range(10)]
FLIP = [{"type": "RandomHorizontalFlip", "args": {"p": 1.0}}]


def infer(*args: str, check: bool = True):
    """inference.py's main in this process (predicted_test_data runs it as a user does, in a new one)."""
    return run_in_process("inference.py", *args, check=check)


def printed_metrics(stdout: str) -> dict[str, float]:
    """The "loss X  accuracy Y ..." line inference.py prints, as a dict."""
    line = next(line for line in stdout.splitlines() if line.startswith("loss "))
    words = line.split()
    return {key: float(value) for key, value in zip(words[::2], words[1::2])}


def assert_one_error(result, *words: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The tiny config trained for 8 epochs (about 0.95 validation accuracy), shared by the module."""
    tmp_path = tmp_path_factory.mktemp("digits")
    config = make_config(tmp_path, **{"trainer.epochs": 8})
    run_in_process("train.py", "-c", str(config), check=True)
    (run,) = run_dirs(tmp_path)
    return run


@pytest.fixture(scope="module")
def predicted_test_data(digits_run):
    """`python inference.py --resume <run>/model_best.pth` on the test data, in a new process, as a user
    runs it: (predictions.csv, the result)."""
    result = run_script("inference.py", "--resume", str(digits_run / "model_best.pth"), check=True)
    return digits_run / "predictions.csv", result


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory):
    """A tiny 2-fold run (2 epochs per fold) for the ensembles."""
    tmp_path = tmp_path_factory.mktemp("kfold")
    config = make_config(tmp_path, **{"trainer.epochs": 2})
    run_in_process("kfold_train.py", "-c", str(config), "--folds", "2", check=True)
    (run,) = run_dirs(tmp_path)
    return run


def write_images(folder, count: int, seed: int, brightness: int = 0) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 100, (16, 16, 3)) + brightness
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img_{i}.png")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """configs/image_folder.json trained for 1 epoch on two classes of 16x16 PNGs in class sub-folders."""
    tmp_path = tmp_path_factory.mktemp("images")
    write_images(tmp_path / "labelled" / "cat", 12, seed=0)
    write_images(tmp_path / "labelled" / "dog", 12, seed=1, brightness=150)
    write_images(tmp_path / "unlabelled", 5, seed=2, brightness=70)
    run_in_process("train.py", "-c", "configs/image_folder.json", f"trainer.save_dir={tmp_path / 'saved'}",
               f"dataset.args.root={tmp_path / 'labelled'}", "dataset.args.image_size=16",
               "dataset.args.train_transform=[]", "dataset.args.eval_transform=[]",
               "arch.args.num_classes=2", "arch.args.num_blocks=[1,1]", "arch.args.widths=[8,16]",
               "data_loader.args.num_workers=0", "trainer.epochs=1", "trainer.tensorboard=false",
               "trainer.progress_bar=false", check=True)
    (run,) = run_dirs(tmp_path, "ImageFolder_ResNet")
    return tmp_path, run


def image_dataset_section(root) -> str:
    return "+inference.dataset=" + json.dumps({"type": "ImageDataset", "args": {"root": str(root), "image_size": 16}})


# -- predictions of the test data ---------------------------------------------------------------------


def test_data_predictions_csv_has_a_row_per_test_sample(predicted_test_data):
    path, _ = predicted_test_data
    predictions = pd.read_csv(path)
    test_data = DigitsDataset(train=False)
    assert len(test_data) == 360
    assert list(predictions.columns) == ["id", "prediction", "prediction_name", "target", *DIGIT_PROBS]
    assert list(predictions["id"]) == list(range(len(test_data)))
    assert list(predictions["target"]) == list(test_data.targets)
    np.testing.assert_allclose(predictions[DIGIT_PROBS].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(predictions["prediction"], predictions[DIGIT_PROBS].to_numpy().argmax(axis=1))
    assert list(predictions["prediction_name"].astype(str)) == list(predictions["prediction"].astype(str))
    assert (predictions["prediction"] == predictions["target"]).mean() >= 0.8


def test_test_data_loss_and_metrics_are_printed(predicted_test_data):
    path, result = predicted_test_data
    predictions = pd.read_csv(path)
    printed = printed_metrics(result.stdout)
    assert list(printed) == ["loss", "accuracy", "top_k_acc"]
    assert printed["accuracy"] == pytest.approx((predictions["prediction"] == predictions["target"]).mean(), abs=1e-6)
    probs = predictions[DIGIT_PROBS].to_numpy()
    cross_entropy = -np.log(probs[np.arange(len(predictions)), predictions["target"]]).mean()
    assert printed["loss"] == pytest.approx(cross_entropy, abs=1e-5)
    assert str(path) in result.stdout


def valid_metrics(checkpoint, output, *args: str) -> tuple[dict[str, float], dict[str, float]]:
    """The metrics `inference.py --split valid` prints, and those of metrics.csv at the checkpoint's epoch."""
    result = infer("--resume", str(checkpoint), "--split", "valid", "--output", str(output), *args)
    epoch = torch.load(checkpoint, weights_only=True)["epoch"]
    row = pd.read_csv(checkpoint.parent / "metrics.csv").set_index("epoch").loc[epoch]
    expected = {"loss": row["val_loss"], "accuracy": row["val_accuracy"], "top_k_acc": row["val_top_k_acc"]}
    return printed_metrics(result.stdout), expected


def test_valid_split_metrics_equal_metrics_csv_whatever_the_batch_size(digits_run, tmp_path):
    printed = {}
    for batch_size in (7, 64):
        output = tmp_path / f"valid_{batch_size}.csv"
        printed[batch_size], expected = valid_metrics(digits_run / "model_best.pth", output, "--bs", str(batch_size))
        assert printed[batch_size] == pytest.approx(expected, abs=1e-6), batch_size
    assert printed[7] == pytest.approx(printed[64], abs=1e-6)
    valid = pd.read_csv(tmp_path / "valid_7.csv")
    n_train = len(DigitsDataset(train=True))
    assert len(valid) == round(0.2 * n_train)
    assert valid["id"].is_unique and valid["id"].between(0, n_train - 1).all()
    pd.testing.assert_frame_equal(valid, pd.read_csv(tmp_path / "valid_64.csv"), check_exact=False, atol=1e-6)


def test_valid_split_metrics_of_an_earlier_checkpoint_equal_its_epochs_row(digits_run, tmp_path):
    checkpoint = digits_run / "checkpoint-epoch3.pth"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 3
    printed, expected = valid_metrics(checkpoint, tmp_path / "valid.csv")
    assert printed == pytest.approx(expected, abs=1e-6)


# -- an unlabelled folder of images -------------------------------------------------------------------


@pytest.fixture(scope="module")
def unlabelled_predictions(image_run):
    """Predictions of the image model for a flat folder of images (no labels): (the table, the result)."""
    tmp_path, run = image_run
    output = tmp_path / "unlabelled.csv"
    result = infer("--resume", str(run / "model_best.pth"), image_dataset_section(tmp_path / "unlabelled"),
                   "--output", str(output))
    return pd.read_csv(output), result


def test_unlabelled_image_folder_gives_a_row_per_file(image_run, unlabelled_predictions):
    tmp_path, _ = image_run
    predictions, result = unlabelled_predictions
    files = sorted(str(p) for p in (tmp_path / "unlabelled").iterdir())
    assert sorted(predictions["id"]) == files
    assert "target" not in predictions.columns
    assert list(predictions.columns[:2]) == ["id", "prediction"]
    assert list(predictions.columns[-2:]) == ["prob_0", "prob_1"]
    np.testing.assert_allclose(predictions[["prob_0", "prob_1"]].sum(axis=1), 1.0, atol=1e-5)
    assert not any(line.startswith("loss ") for line in result.stdout.splitlines())  # no labels, no score


def test_image_folder_with_another_class_count_is_an_error(image_run):
    tmp_path, run = image_run
    for name, brightness in (("cat", 0), ("dog", 150), ("bird", 70)):
        write_images(tmp_path / "three" / name, 2, seed=3, brightness=brightness)
    result = infer("--resume", str(run / "model_best.pth"), image_dataset_section(tmp_path / "three"), check=False)
    assert_one_error(result, "3 classes", "2")
    assert not (run / "predictions.csv").exists()


def test_labelled_images_with_other_class_names_of_the_same_count_are_an_error(image_run):
    """Two classes, as the model has, but not cat and dog: index 0 would silently mean something else."""
    tmp_path, run = image_run
    for name, brightness in (("ant", 0), ("bee", 150)):
        write_images(tmp_path / "insects" / name, 2, seed=4, brightness=brightness)
    output = tmp_path / "insects.csv"
    result = infer("--resume", str(run / "model_best.pth"), image_dataset_section(tmp_path / "insects"),
                   "--output", str(output), check=False)
    assert_one_error(result, "ant, bee", "cat, dog")
    assert not output.exists()


# -- ensembles ----------------------------------------------------------------------------------------


def test_kfold_directory_is_an_ensemble_of_every_folds_best_model(kfold_run, tmp_path):
    checkpoints = [kfold_run / f"fold_{k}" / "model_best.pth" for k in range(2)]
    result = infer("--resume", str(kfold_run))
    assert "with 2 checkpoint(s)" in result.stdout
    for checkpoint in checkpoints:
        assert str(checkpoint) in result.stdout
    ensemble = pd.read_csv(kfold_run / "predictions.csv")
    singles = []
    for k, checkpoint in enumerate(checkpoints):
        infer("--resume", str(checkpoint), "--output", str(tmp_path / f"fold_{k}.csv"))
        singles.append(pd.read_csv(tmp_path / f"fold_{k}.csv"))
    mean_probs = np.mean([single[DIGIT_PROBS].to_numpy() for single in singles], axis=0)
    assert np.abs(singles[0][DIGIT_PROBS].to_numpy() - singles[1][DIGIT_PROBS].to_numpy()).max() > 1e-3
    np.testing.assert_allclose(ensemble[DIGIT_PROBS].to_numpy(), mean_probs, atol=1e-5)
    np.testing.assert_array_equal(ensemble["prediction"], mean_probs.argmax(axis=1))
    assert list(ensemble["id"]) == list(singles[0]["id"])
    assert list(ensemble["target"]) == list(singles[0]["target"])

    output = tmp_path / "repeated.csv"
    infer("--resume", str(checkpoints[0]), "--resume", str(checkpoints[1]), "--output", str(output))
    pd.testing.assert_frame_equal(pd.read_csv(output), ensemble, check_exact=False, atol=1e-6)


# -- test-time augmentation ---------------------------------------------------------------------------


def test_tta_averages_the_plain_and_the_flipped_test_data(digits_run, predicted_test_data, tmp_path):
    import model.model as module_arch

    checkpoint = torch.load(digits_run / "model_best.pth", weights_only=True)
    model = getattr(module_arch, checkpoint["arch"])(**checkpoint["config"]["arch"]["args"])
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    with torch.no_grad():
        flipped = model(DigitsDataset(train=False).images.flip(-1)).softmax(dim=1).numpy()
    plain = pd.read_csv(predicted_test_data[0])[DIGIT_PROBS].to_numpy()
    result = infer("--resume", str(digits_run / "model_best.pth"), f"+inference.tta={json.dumps(FLIP)}",
                   "--output", str(tmp_path / "tta.csv"))
    tta = pd.read_csv(tmp_path / "tta.csv")[DIGIT_PROBS].to_numpy()
    assert np.abs(tta - plain).max() > 1e-3
    np.testing.assert_allclose(tta, (plain + flipped) / 2, atol=1e-5)
    assert printed_metrics(result.stdout)["accuracy"] >= 0.8


def test_predict_averages_probabilities_over_models_and_views():
    from torchvision.transforms import v2

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)) for _ in range(2)]
    data, targets = torch.randn(10, 1, 3, 4), torch.arange(10) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, targets), batch_size=4)
    flip = v2.RandomHorizontalFlip(p=1.0)
    cpu = torch.device("cpu")
    with torch.no_grad():
        logits = [model(data) for model in models]
        flipped_logits = [model(data.flip(-1)) for model in models]

    outputs, predicted_targets = predict(models[:1], loader, cpu, BaseTask())
    torch.testing.assert_close(outputs, logits[0])  # one model, no TTA: the logits themselves
    torch.testing.assert_close(predicted_targets, targets)

    outputs, _ = predict(models[:1], loader, cpu, BaseTask(), tta=[flip])
    expected = (logits[0].softmax(1) + flipped_logits[0].softmax(1)) / 2
    torch.testing.assert_close(outputs.exp(), expected)
    assert not torch.allclose(outputs.softmax(1), logits[0].softmax(1), atol=1e-3)

    outputs, _ = predict(models, loader, cpu, BaseTask())
    torch.testing.assert_close(outputs.exp(), (logits[0].softmax(1) + logits[1].softmax(1)) / 2)

    outputs, _ = predict(models, loader, cpu, BaseTask(), tta=[flip])
    everything = torch.stack([x.softmax(1) for x in (*logits, *flipped_logits)]).mean(0)
    torch.testing.assert_close(outputs.exp(), everything)


# -- errors -------------------------------------------------------------------------------------------


def test_config_with_another_arch_than_the_checkpoint_is_an_error(digits_run, tmp_path):
    checkpoint = digits_run / "model_best.pth"
    iris_config = make_config(tmp_path, IRIS_CONFIG)
    line = assert_one_error(infer("--resume", str(checkpoint), "-c", str(iris_config), check=False),
                            "ResNet", "MLP")
    assert line.startswith(f"error: {checkpoint}: ")


def test_arch_args_that_do_not_fit_the_checkpoint_are_an_error(digits_run, tmp_path):
    checkpoint = digits_run / "model_best.pth"
    result = infer("--resume", str(checkpoint), "arch.args.widths=[8,32]", "--output", str(tmp_path / "p.csv"),
                   check=False)
    line = assert_one_error(result, "does not fit")
    assert line.startswith(f"error: {checkpoint}: ")
    assert not (tmp_path / "p.csv").exists()


def test_test_data_with_another_class_count_than_the_model_is_an_error(digits_run, tmp_path):
    result = infer("--resume", str(digits_run / "model_best.pth"), "arch.args.num_classes=5", "--output",
                   str(tmp_path / "p.csv"), check=False)
    # The 5-class model the config describes does not fit the 10-class checkpoint (nor the data).
    assert_one_error(result, "10", "5")
    assert not (tmp_path / "p.csv").exists()


def test_missing_checkpoint_is_an_error(digits_run):
    missing = digits_run / "no_such.pth"
    line = assert_one_error(infer("--resume", str(missing), check=False))
    assert line.startswith(f"error: {missing}: ")


@pytest.mark.parametrize("position", ["first", "second"])
def test_damaged_checkpoint_is_an_error_that_names_it(digits_run, tmp_path, position):
    damaged = tmp_path / "damaged.pth"
    data = (digits_run / "model_best.pth").read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    good = str(digits_run / "model_best.pth")
    resume = ["--resume", str(damaged)] if position == "first" else ["--resume", good, "--resume", str(damaged)]
    result = infer(*resume, "--output", str(tmp_path / "p.csv"), check=False)
    line = assert_one_error(result)
    assert line.startswith(f"error: {damaged}: ")
    assert not (tmp_path / "p.csv").exists()


# -- k-fold checkpoints and class names ---------------------------------------------------------------


def test_valid_split_of_a_kfold_fold_is_its_held_out_part(kfold_run, tmp_path):
    fold_dir = kfold_run / "fold_1"
    epoch = torch.load(fold_dir / "model_best.pth", weights_only=True)["epoch"]
    row = pd.read_csv(fold_dir / "metrics.csv").set_index("epoch").loc[epoch]
    result = infer("--resume", str(fold_dir / "model_best.pth"), "--split", "valid", "--output",
                   str(tmp_path / "v.csv"))
    targets = DigitsDataset(train=True).targets
    (_, held_out), = make_folds(targets, len(targets), 2, stratified=True, shuffle=True, seed=1)[1:]
    assert sorted(pd.read_csv(tmp_path / "v.csv")["id"]) == sorted(held_out)
    printed = printed_metrics(result.stdout)
    assert printed["loss"] == pytest.approx(row["val_loss"], abs=1e-6)
    assert printed["accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-6)


def test_unlabelled_image_folder_predictions_have_the_training_class_names(unlabelled_predictions):
    predictions, _ = unlabelled_predictions
    assert "prediction_name" in predictions.columns
    assert list(predictions["prediction_name"]) == [["cat", "dog"][p] for p in predictions["prediction"]]
