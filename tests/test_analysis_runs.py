"""analyze.py on real runs: a k-fold run on an image folder with groups (the page, its gallery, the
per-class table and the calibration), a training run whose temperature inference.py then applies,
two runs compared, and the page opened in headless Chromium."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from sklearn import metrics

from tests.conftest import IRIS_CONFIG, TINY_CONFIG, make_config, run_dirs, run_in_process
from tests.test_analysis import reference_ece

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync"]
TOP = 8


def image_config(tmp_path: Path) -> Path:
    """36 small images of 3 colours (classes) by 9 people (groups in the file names), noisy enough to
    be confused."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for label, colour in (("red", (200, 40, 40)), ("green", (40, 200, 40)), ("blue", (40, 40, 200))):
        (root / label).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(np.array(colour) * 0.4 + rng.normal(80, 60, (10, 10, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"p{i % 9}_{i}.png")
    arch = TINY_CONFIG["arch"] | {"args": TINY_CONFIG["arch"]["args"] | {"in_channels": 3, "num_classes": 3}}
    return make_config(tmp_path, TINY_CONFIG, name="TinyImages", arch=arch,
                       dataset={"type": "ImageDataset", "args": {"root": str(root), "group_pattern": r"^p(\d+)_"}},
                       data_loader={"type": "ImageDataLoader", "args": {"batch_size": 8, "num_workers": 0}},
                       **{"trainer.epochs": 2, "trainer.save_period": 0})


@pytest.fixture(scope="module")
def kfold_report(tmp_path_factory):
    """A 3-fold run on the image folder, and analyze.py's page of it: (k-fold directory, report folder)."""
    tmp_path = tmp_path_factory.mktemp("analysis_kfold")
    run_in_process("kfold_train.py", "-c", str(image_config(tmp_path)), "--folds", "3", check=True)
    (run,) = run_dirs(tmp_path, "TinyImages")
    run_in_process("analyze.py", str(run), "--top", str(TOP), "--no-progress", check=True)
    return run, run / "report"


def test_kfold_page_per_class_and_gallery(kfold_report):
    run, report = kfold_report
    oof = pd.read_csv(run / "oof_predictions.csv")
    (folder,) = [p for p in report.iterdir() if p.is_dir() and (p / "per_class.csv").is_file()]
    per_class = pd.read_csv(folder / "per_class.csv").set_index("class")
    f1 = metrics.f1_score(oof["target"], oof["prediction"], average=None, labels=[0, 1, 2])
    names = dict(zip(oof["prediction"], oof["prediction_name"]))
    for k in range(3):
        assert per_class.loc[names.get(k, str(k)), "f1"] == pytest.approx(f1[k])
    probs = oof.filter(regex="^prob_").to_numpy()
    loss = -np.log(probs[np.arange(len(oof)), oof["target"]])
    worst = list(oof["id"].to_numpy()[np.argsort(-loss, kind="stable")[:TOP]])
    assert list(pd.read_csv(folder / "worst_samples.csv")["id"]) == worst
    page = (report / "index.html").read_text()
    gallery = re.search(r'<div class="gallery">(.*?)</div>', page).group(1)
    assert re.findall(r"<figcaption>.*?<br>(.*?)</figcaption>", gallery) == [Path(i).name for i in worst]
    assert len(re.findall(r"<img ", gallery)) == TOP
    groups = pd.read_csv(folder / "groups.csv")
    assert sorted(groups["group"].astype(str)) == sorted(oof["group"].astype(str).unique())


def test_kfold_calibration_is_saved_with_the_run(kfold_report):
    run, _ = kfold_report
    calibration = json.loads((run / "calibration.json").read_text())
    oof = pd.read_csv(run / "oof_predictions.csv")
    probs = oof.filter(regex="^prob_").to_numpy()
    assert calibration["ece_before"] == pytest.approx(reference_ece(probs, oof["target"].to_numpy()), abs=1e-5)
    assert calibration["ece_after"] <= calibration["ece_before"]
    assert calibration["nll_after"] <= calibration["nll_before"]
    expected_nll = metrics.log_loss(oof["target"], probs / probs.sum(axis=1, keepdims=True))
    assert calibration["nll_before"] == pytest.approx(expected_nll, rel=1e-4)


def test_page_opens_in_chromium_with_every_image_and_no_console_error(kfold_report):
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    from playwright import sync_api  # requirements-dev.txt

    _, report = kfold_report
    errors = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file() else
                                             shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((report / "index.html").resolve().as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
        browser.close()
    assert len(images) >= TOP + 2, images  # the gallery, the confusion matrix, the reliability diagram
    assert [src for src, width in images if width == 0] == []
    assert errors == []


def held_out_nll(path: Path) -> float:
    table = pd.read_csv(path)
    probs = table.filter(regex="^prob_").to_numpy()
    return metrics.log_loss(table["target"], probs / probs.sum(axis=1, keepdims=True), labels=range(probs.shape[1]))


def test_inference_applies_the_temperature_of_an_overconfident_run(tmp_path):
    # Half of the digits for validation and a high learning rate: after 4 epochs the model is too sure.
    config = make_config(tmp_path, **{"trainer.epochs": 4, "optimizer.args.lr": 0.03,
                                      "data_loader.args.validation_split": 0.5})
    run_in_process("train.py", "-c", str(config), check=True)
    (run,) = run_dirs(tmp_path)
    run_in_process("analyze.py", str(run), "--no-progress", check=True)
    temperature = json.loads((run / "calibration.json").read_text())["temperature"]
    assert temperature > 1, "the case is an overconfident model"
    result = run_in_process("inference.py", "--resume", str(run), "-o", str(tmp_path / "calibrated.csv"), check=True)
    assert "temperature" in result.stdout + result.stderr
    run_in_process("inference.py", "--resume", str(run), "-o", str(tmp_path / "raw.csv"), "--no-calibration",
                   check=True)
    calibrated, raw = pd.read_csv(tmp_path / "calibrated.csv"), pd.read_csv(tmp_path / "raw.csv")
    assert (calibrated["prediction"] == raw["prediction"]).all(), "a temperature never changes the class"
    assert held_out_nll(tmp_path / "calibrated.csv") <= held_out_nll(tmp_path / "raw.csv")
    # The calibrated probabilities are softmax(log p / T) of the raw ones.
    logits = np.log(raw.filter(regex="^prob_").to_numpy()) / temperature
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert calibrated.filter(regex="^prob_").to_numpy() == pytest.approx(expected, abs=1e-4)


def test_two_runs_compared(tmp_path):
    for lr, epochs in ((0.1, 3), (0.3, 5)):
        config = make_config(tmp_path, IRIS_CONFIG, **{"optimizer.args.lr": lr, "trainer.epochs": epochs})
        run_in_process("train.py", "-c", str(config), check=True)
    first, second = run_dirs(tmp_path, "TinyIris")
    out = tmp_path / "report"
    run_in_process("analyze.py", str(first), str(second), "--out", str(out), "--no-progress", check=True)
    differences = pd.read_csv(out / "compare" / "config_differences.csv")
    assert list(differences["key"]) == ["optimizer.args.lr", "trainer.epochs"]
    a, b = (pd.read_csv(out / "predictions" / f"TinyIris_{run.name}_valid.csv") for run in (first, second))
    assert list(a["id"]) == list(b["id"]), "both runs predicted the same validation split"
    a_right, b_right = a["prediction"] == a["target"], b["prediction"] == b["target"]
    only_a, only_b = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
    paired = pd.read_csv(out / "compare" / "paired_tests.csv").iloc[0]
    assert (paired["a_only_correct"], paired["b_only_correct"]) == (only_a, only_b)
    expected = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    assert paired["p_value"] == pytest.approx(expected)
    assert (out / "compare" / "curves.png").is_file()
    final = pd.read_csv(out / "compare" / "final_metrics.csv").set_index("metric")
    assert final.loc["last_epoch.epoch"].tolist() == [3, 5]
