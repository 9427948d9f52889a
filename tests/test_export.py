"""export.py (README "Exporting a model"): ONNX, torch.export and TorchScript files that compute what the
checkpoint's model computes (checked here with onnxruntime and the models rebuilt by hand), the model card,
inference.py on an exported ONNX model, and the one-line errors of a model that cannot be exported."""
import copy
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import make_config, run_dirs, run_in_process

NORMALIZE = {"type": "Normalize", "args": {"mean": [0.3], "std": [0.4]}}
# Other values for training: the card must give the evaluation transform's.
TRAIN_TRANSFORM = [{"type": "RandomAffine", "args": {"degrees": 5}},
                   {"type": "Normalize", "args": {"mean": [0.25], "std": [0.5]}}]
TINY_ARCH = {"num_blocks": [1, 1], "widths": [8, 16], "num_classes": 10, "in_channels": 1, "stem": "small"}


def assert_one_error(result, *words: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def digits_inputs(count: int) -> torch.Tensor:
    """The first test digits as scikit-learn gives them, normalised as NORMALIZE says (independent of the
    template's dataset code)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, targets = load_digits(return_X_y=True)
    _, test = train_test_split(np.arange(len(targets)), test_size=0.2, stratify=targets, random_state=0)
    pixels = torch.tensor(images[np.sort(test)[:count]] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return (pixels - 0.3) / 0.4


def resnet_from(checkpoint: dict, weights: str = "ema") -> torch.nn.Module:
    from model.model import ResNet

    model = ResNet(**TINY_ARCH)
    model.load_state_dict(checkpoint["ema"]["state_dict"] if weights == "ema" else checkpoint["state_dict"])
    return model.eval()


def onnx_outputs(path, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: inputs.numpy()})))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """The tiny digits config with normalisation and an EMA of the weights, trained for one epoch."""
    tmp_path = tmp_path_factory.mktemp("export")
    config = make_config(tmp_path, **{"trainer.epochs": 1, "trainer.save_period": 0, "trainer.ema": {"decay": 0.9},
                                      "dataset.args.train_transform": TRAIN_TRANSFORM,
                                      "dataset.args.eval_transform": [NORMALIZE]})
    run_in_process("train.py", "-c", str(config), check=True)
    (run,) = run_dirs(tmp_path)
    return run


@pytest.fixture(scope="module")
def onnx_export(ema_run):
    """`export.py --resume <run>/model_best.pth`: (the ONNX file, the checkpoint)."""
    run_in_process("export.py", "--resume", str(ema_run / "model_best.pth"), "--samples", "16", check=True)
    return ema_run / "model.onnx", torch.load(ema_run / "model_best.pth", weights_only=True)


def test_the_onnx_model_computes_what_the_ema_model_does(onnx_export):
    path, checkpoint = onnx_export
    inputs = digits_inputs(20)
    expected = resnet_from(checkpoint, "ema")(inputs).detach().numpy()
    for batch in (inputs[:1], inputs):
        (logits,) = onnx_outputs(path, batch).values()
        assert np.abs(logits - expected[:len(batch)]).max() < 1e-4
        assert (logits.argmax(axis=1) == expected[:len(batch)].argmax(axis=1)).all()
    raw = resnet_from(checkpoint, "raw")(inputs).detach().numpy()
    assert np.abs(onnx_outputs(path, inputs)["output"] - raw).max() > 1e-3  # the EMA's weights, not the raw ones
    verified = json.loads((path.parent / "model_card.json").read_text())["files"]["model.onnx"]["verification"]
    assert verified["max_abs_diff"] < 1e-4 and verified["class_agreement"] == 1.0
    assert verified["batch_sizes"] == [1, 16] and verified["samples"] == 16


def test_the_model_card_holds_the_configs_preprocessing_and_the_checkpoints_hash(onnx_export, ema_run):
    path, checkpoint = onnx_export
    card = json.loads((path.parent / "model_card.json").read_text())
    run_config = json.loads((ema_run / "config.json").read_text())
    normalize = run_config["dataset"]["args"]["eval_transform"][0]["args"]
    assert card["preprocessing"]["normalize"] == {"mean": normalize["mean"], "std": normalize["std"]}
    assert card["checkpoint"]["sha256"] == hashlib.sha256((ema_run / "model_best.pth").read_bytes()).hexdigest()
    assert card["files"]["model.onnx"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["classes"] == [str(d) for d in range(10)] and card["input"]["shape"] == ["batch", 1, 8, 8]
    assert card["checkpoint"]["weights"] == "EMA" and card["config"]["arch"] == run_config["arch"]
    assert "0.3" in (path.parent / "model_card.md").read_text()


def test_inference_on_the_onnx_model_writes_the_checkpoints_predictions(onnx_export, ema_run, tmp_path):
    path, _ = onnx_export
    run_in_process("inference.py", "--resume", str(path), "-o", str(tmp_path / "onnx.csv"), check=True)
    run_in_process("inference.py", "--resume", str(ema_run / "model_best.pth"), "-o", str(tmp_path / "pth.csv"),
                   check=True)
    onnx, pth = pd.read_csv(tmp_path / "onnx.csv"), pd.read_csv(tmp_path / "pth.csv")
    assert list(onnx.columns) == list(pth.columns) and len(onnx) == len(pth) == 360
    assert (onnx["prediction"] == pth["prediction"]).all() and (onnx["id"] == pth["id"]).all()
    probs = [f"prob_{c}" for c in range(10)]
    assert np.abs(onnx[probs].to_numpy() - pth[probs].to_numpy()).max() < 1e-4
    expected = torch.softmax(resnet_from(torch.load(ema_run / "model_best.pth", weights_only=True))(
        digits_inputs(360)), dim=1).detach().numpy()
    assert np.abs(onnx[probs].to_numpy() - expected).max() < 1e-4  # the card's preprocessing was applied


def test_postprocess_outputs_probabilities(onnx_export, ema_run, tmp_path):
    _, checkpoint = onnx_export
    out = tmp_path / "deploy" / "model.onnx"
    run_in_process("export.py", "--resume", str(ema_run / "model_best.pth"), "--postprocess", "--out", str(out),
                   "--samples", "8", check=True)
    inputs = digits_inputs(12)
    probabilities = onnx_outputs(out, inputs)["probabilities"]
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    expected = torch.softmax(resnet_from(checkpoint)(inputs), dim=1).detach().numpy()
    assert np.abs(probabilities - expected).max() < 1e-5
    assert "postprocess" in assert_one_error(run_in_process("inference.py", "--resume", str(out)))


@pytest.mark.parametrize("fmt", ["exported", "torchscript"])
def test_torch_export_and_torchscript_files_compute_what_the_model_does(onnx_export, ema_run, tmp_path, fmt):
    _, checkpoint = onnx_export
    out = tmp_path / f"model.{fmt}"
    run_in_process("export.py", "--resume", str(ema_run), "--format", fmt, "--out", str(out), "--samples", "8",
                   check=True)
    loaded = torch.export.load(str(out)).module() if fmt == "exported" else torch.jit.load(str(out))
    inputs = digits_inputs(5)
    (output,) = loaded(inputs)
    assert (output - resnet_from(checkpoint)(inputs)).abs().max() < 1e-4
    assert json.loads((tmp_path / "model_card.json").read_text())["files"][out.name]["format"] == fmt


def test_a_fixed_batch_opset_13_export_verified_on_data_files(onnx_export, ema_run, tmp_path):
    _, checkpoint = onnx_export
    inputs = digits_inputs(6)
    np.save(tmp_path / "inputs.npy", inputs.numpy())
    out = tmp_path / "fixed" / "model.onnx"
    result = run_in_process("export.py", "--resume", str(ema_run), "--batch", "4", "--data",
                            str(tmp_path / "inputs.npy"), "--out", str(out), "--opset", "13", check=True)
    assert "6 samples at batch sizes 4," in result.stdout  # a full batch and one filled up with repeats
    import onnx
    import onnxruntime

    assert [entry.version for entry in onnx.load(str(out)).opset_import if entry.domain == ""] == [13]

    assert onnxruntime.InferenceSession(str(out)).get_inputs()[0].shape == [4, 1, 8, 8]
    (logits,) = onnx_outputs(out, inputs[:4]).values()
    assert np.abs(logits - resnet_from(checkpoint)(inputs[:4]).detach().numpy()).max() < 1e-4


def sabotaged_checkpoint(ema_run, tmp_path, monkeypatch, name: str, forward) -> str:
    """The run's checkpoint, relabelled as a ResNet subclass ``name`` (added to model.model) with ``forward``."""
    import model.model
    from utils.checkpoint.files import save_checkpoint

    subclass = type(name, (model.model.ResNet,), {"forward": forward, "__module__": "model.model"})
    monkeypatch.setattr(model.model, name, subclass, raising=False)
    checkpoint = copy.deepcopy(torch.load(ema_run / "model_best.pth", weights_only=True))
    checkpoint["arch"] = checkpoint["config"]["arch"]["type"] = name
    save_checkpoint(checkpoint, tmp_path / "sabotaged.pth")
    return str(tmp_path / "sabotaged.pth")


def test_a_model_that_exports_differently_fails_verification_and_leaves_no_file(ema_run, tmp_path, monkeypatch):
    from model.model import ResNet

    def forward(self, x):
        logits = ResNet.forward(self, x)
        return logits if x.abs().sum() > 200 else -logits  # a batch of 16 takes the first branch, 1 sample not

    path = sabotaged_checkpoint(ema_run, tmp_path, monkeypatch, "BranchyResNet", forward)
    out = tmp_path / "deploy" / "model.onnx"
    result = run_in_process("export.py", "--resume", path, "--out", str(out), "--samples", "16")
    assert_one_error(result, "does not compute what the PyTorch model does", "nothing was written")
    assert list(out.parent.iterdir()) == []


def test_an_operator_without_onnx_support_is_named_in_one_line(ema_run, tmp_path, monkeypatch):
    from model.model import ResNet

    def forward(self, x):
        logits = ResNet.forward(self, x)
        return logits + torch.histc(logits, bins=10)  # no ONNX translation of histc

    path = sabotaged_checkpoint(ema_run, tmp_path, monkeypatch, "HistogramResNet", forward)
    out = tmp_path / "deploy" / "model.onnx"
    result = run_in_process("export.py", "--resume", path, "--out", str(out), "--samples", "4")
    assert_one_error(result, "HistogramResNet", "histc")
    assert not out.exists() and not (out.parent / "model_card.json").exists()


def test_a_timm_model_exports_and_verifies(tmp_path):
    config = make_config(tmp_path, **{"arch": {"type": "TimmModel", "args": {"model_name": "test_resnet",
                                                                             "num_classes": 10, "in_chans": 1}},
                                      "trainer.epochs": 1, "trainer.save_period": 0})
    run_in_process("train.py", "-c", str(config), check=True)
    (run,) = run_dirs(tmp_path)
    run_in_process("export.py", "--resume", str(run), "--samples", "8", check=True)
    from model.model import TimmModel

    model = TimmModel("test_resnet", num_classes=10, in_chans=1)
    model.load_state_dict(torch.load(run / "model_best.pth", weights_only=True)["state_dict"])
    inputs = torch.rand(3, 1, 8, 8)
    (logits,) = onnx_outputs(run / "model.onnx", inputs).values()
    assert np.abs(logits - model.eval()(inputs).detach().numpy()).max() < 1e-4


def test_a_multihead_model_exports_one_probability_output_per_head(tmp_path):
    from tests.test_tasks import multihead_config

    config = multihead_config(tmp_path, **{"trainer.epochs": 1})
    run_in_process("train.py", "-c", str(config), check=True)
    run = run_dirs(tmp_path, "Task")[0]
    run_in_process("export.py", "--resume", str(run), "--postprocess", "--samples", "8", check=True)
    from model.model import MLP

    model = MLP(in_features=6, num_classes=8, hidden=[32])
    model.load_state_dict(torch.load(run / "model_best.pth", weights_only=True)["state_dict"])
    inputs = torch.randn(5, 6)
    outputs = onnx_outputs(run / "model.onnx", inputs)
    logits = model.eval()(inputs).detach()
    assert list(outputs) == ["probabilities_mask", "probabilities_gender", "probabilities_age"]
    for name, columns in zip(outputs, (slice(0, 3), slice(3, 5), slice(5, 8))):
        assert np.allclose(outputs[name].sum(axis=1), 1, atol=1e-5)
        assert np.abs(outputs[name] - torch.softmax(logits[:, columns], dim=1).numpy()).max() < 1e-5


def test_multilabel_and_regression_outputs_of_postprocess(tmp_path):
    from model.model import MLP
    from model.task import MultiLabel, Regression
    from utils.export.verify import export_and_verify
    from utils.export.wrappers import ExportedOutputs

    torch.manual_seed(0)
    model, inputs = MLP(in_features=4, num_classes=3, hidden=[8]).eval(), torch.randn(6, 4)
    for task, name, expected in ((MultiLabel(), "probabilities", torch.sigmoid(model(inputs))),
                                 (Regression(), "prediction", model(inputs))):
        out = tmp_path / f"{name}.onnx"
        export_and_verify(ExportedOutputs(model, task, inputs).eval(), inputs, out, "onnx", None, 1e-4)
        assert list(onnx_outputs(out, inputs)) == [name]
        assert np.abs(onnx_outputs(out, inputs)[name] - expected.detach().numpy()).max() < 1e-5
