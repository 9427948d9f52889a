"""Checkpoint files: what they hold, atomic saves, damaged and untrusted files.

The end-to-end runs share module-scoped training runs. They run train.py's main in this process: what
is checked is what the script writes and prints, not that it runs in a process of its own.
"""
import json
import multiprocessing
import os
import pickle
import random
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import model.model as module_arch
import train as train_script
from base.base_model import BaseModel
from model.model import ResNet
from tests.conftest import (
    IRIS_CONFIG,
    TINY_CONFIG,
    assert_same_tensor,
    assert_same_tensors,
    make_config,
    run_dirs,
    run_in_process,
)
from utils.checkpoint.files import (
    clean_temp_files,
    link_checkpoint,
    load_checkpoint,
    save_checkpoint,
    strip_module_prefix,
)
from utils.cli import run_cli
from utils.errors import CheckpointError

SECTION_5_KEYS = {
    "format_version", "arch", "epoch", "global_step", "state_dict", "optimizer", "lr_scheduler", "scaler",
    "monitor_best", "not_improved_count", "rng_states", "config", "wandb_id", "metrics",
}
RNG_KEYS = {"python", "numpy", "torch", "cuda"}


def train(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python train.py ARGS``, run in this process: exit code, stdout and stderr."""
    return run_in_process("train.py", *args, check=check)


def load_plain(path: Path) -> dict:
    """A checkpoint read the way any PyTorch user reads it, without this template's code."""
    return torch.load(path, weights_only=True, map_location="cpu")


def metrics_rows(run_dir: Path) -> list[dict]:
    """metrics.csv as text, without the epoch_time column (the only one that may differ between runs)."""
    frame = pd.read_csv(run_dir / "metrics.csv", dtype=str)
    return frame.drop(columns="epoch_time").to_dict("records")


def assert_one_error_line(result: subprocess.CompletedProcess, *words: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


# -- two training runs shared by the tests -------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-epoch run with a checkpoint every epoch, an uninterrupted 3-epoch run of the same config,
    and a 1-epoch run of the tabular (iris) example."""
    two, three, iris = (tmp_path_factory.mktemp(name) for name in ("two_epochs", "three_epochs", "iris"))
    changes = {"data_loader.args.batch_size": 32, "trainer.save_period": 1}
    configs = {two: make_config(two, **changes, **{"trainer.epochs": 2}),
               three: make_config(three, **changes, **{"trainer.epochs": 3}),
               iris: make_config(iris, IRIS_CONFIG, **{"trainer.epochs": 1})}
    for config in configs.values():
        train("-c", str(config))
    (run,), (reference,), (iris_run,) = run_dirs(two), run_dirs(three), run_dirs(iris, "TinyIris")
    return SimpleNamespace(run=run, reference=reference, iris=iris_run,
                           config=json.loads((run / "config.json").read_text()))


# -- 1. what a checkpoint holds --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["last.pth", "model_best.pth", "checkpoint-epoch1.pth", "checkpoint-epoch2.pth"])
def test_checkpoint_loads_with_weights_only_and_holds_section_5(runs, name):
    path = runs.run / name
    checkpoint = load_plain(path)

    assert SECTION_5_KEYS <= checkpoint.keys(), sorted(SECTION_5_KEYS - checkpoint.keys())
    assert checkpoint["arch"] == "ResNet"
    assert isinstance(checkpoint["format_version"], int)
    assert isinstance(checkpoint["global_step"], int) and checkpoint["global_step"] > 0
    # The model weights: plain keys that load into a freshly built model, all on the CPU.
    state_dict = checkpoint["state_dict"]
    assert not [key for key in state_dict if key.startswith(("module.", "_orig_mod."))]
    model = ResNet(**TINY_CONFIG["arch"]["args"])
    model.load_state_dict(state_dict)  # strict: every key present, every shape right
    assert all(tensor.device.type == "cpu" for tensor in state_dict.values())
    # Optimizer (Adam keeps per-parameter state), scaler, RNG states, a plain config.
    assert len(checkpoint["optimizer"]["state"]) == len(list(model.parameters()))
    assert isinstance(checkpoint["scaler"], dict)
    rng_states = checkpoint["rng_states"]
    rng = rng_states[0] if isinstance(rng_states, list) else rng_states
    assert RNG_KEYS <= rng.keys()
    assert checkpoint["config"] == runs.config
    assert json.loads(json.dumps(checkpoint["config"])) == checkpoint["config"]
    # The epoch and its metrics match metrics.csv.
    metrics = pd.read_csv(runs.run / "metrics.csv")
    best_epoch = int(metrics.loc[metrics["val_accuracy"].idxmax(), "epoch"])
    epoch = {"last.pth": 2, "model_best.pth": best_epoch, "checkpoint-epoch1.pth": 1, "checkpoint-epoch2.pth": 2}[name]
    assert checkpoint["epoch"] == epoch
    row = metrics[metrics["epoch"] == epoch].iloc[0]
    for column in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert checkpoint["metrics"][column] == pytest.approx(row[column], rel=1e-12), column
    if name == "model_best.pth":
        assert checkpoint["monitor_best"] == pytest.approx(metrics["val_accuracy"].max(), rel=1e-12)
    # The template's own loader reads the same thing.
    assert_same_tensors(state_dict, load_checkpoint(path)["state_dict"])


@pytest.mark.slow
def test_checkpoints_of_the_tabular_example_load_with_weights_only(runs):
    """Iris keeps its class names as NumPy strings; a checkpoint must hold them as plain ones."""
    for name in ("last.pth", "model_best.pth"):
        checkpoint = load_plain(runs.iris / name)
        assert SECTION_5_KEYS <= checkpoint.keys()
    resumed = train("-r", str(runs.iris), "trainer.epochs=2", check=False)
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow
def test_periodic_and_best_checkpoints_are_hard_links_to_last(runs):
    """checkpoint-epoch{N}.pth and model_best.pth are the same file as the last.pth of their epoch."""
    metrics = pd.read_csv(runs.run / "metrics.csv")
    best_epoch = int(metrics.loc[metrics["val_accuracy"].idxmax(), "epoch"])
    files = {name: os.stat(runs.run / name) for name in
             ("last.pth", "checkpoint-epoch1.pth", "checkpoint-epoch2.pth", "model_best.pth")}
    assert files["checkpoint-epoch2.pth"].st_ino == files["last.pth"].st_ino
    assert files["checkpoint-epoch1.pth"].st_ino != files["last.pth"].st_ino
    assert files["model_best.pth"].st_ino == files[f"checkpoint-epoch{best_epoch}.pth"].st_ino
    names_per_file = {}
    for name, stat in files.items():
        names_per_file.setdefault(stat.st_ino, []).append(name)
    for name, stat in files.items():
        assert stat.st_nlink == len(names_per_file[stat.st_ino]), (name, names_per_file)


def test_exact_comparison_sees_dtype_and_shape():
    """The helper that compares resumed runs: equal values in another dtype or shape are not the same."""
    values = torch.tensor([1.0, 2.0, float("nan")])
    assert_same_tensor(values, values.clone())
    for other in (values.double(), values.reshape(1, 3), torch.tensor([1.0, 2.0, 3.0])):
        with pytest.raises(AssertionError):
            assert_same_tensor(values, other)
    with pytest.raises(AssertionError):
        assert_same_tensors({"w": torch.ones(2, dtype=torch.int64)}, {"w": torch.ones(2)})


def test_strip_module_prefix_on_a_data_parallel_model():
    model = ResNet(**TINY_CONFIG["arch"]["args"])
    wrapped = torch.nn.DataParallel(model).state_dict()
    assert all(key.startswith("module.") for key in wrapped)

    stripped = strip_module_prefix(wrapped)
    assert list(stripped) == list(model.state_dict())
    assert_same_tensors(model.state_dict(), stripped)
    ResNet(**TINY_CONFIG["arch"]["args"]).load_state_dict(stripped)
    # torch.compile adds _orig_mod., and DDP around a compiled model both.
    nested = {f"module._orig_mod.{key}": value for key, value in model.state_dict().items()}
    assert list(strip_module_prefix(nested)) == list(model.state_dict())
    # A plain state dict is left as it is.
    assert list(strip_module_prefix(model.state_dict())) == list(model.state_dict())


class Averaged(BaseModel):
    """A model that keeps its network in an attribute named ``module``, as EMA wrappers (timm's ModelEmaV2) do."""

    __module__ = "model.model"  # where the config looks it up

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, num_classes))

    def forward(self, x):
        return self.module(x)


def train_in_process(argv: list[str]) -> int:
    try:
        run_cli(lambda: train_script.main(argv))
    except SystemExit as exit_info:
        return exit_info.code
    return 0


def test_a_model_with_a_submodule_named_module_keeps_its_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(module_arch, "Averaged", Averaged, raising=False)
    config = make_config(tmp_path, {**TINY_CONFIG, "arch": {"type": "Averaged", "args": {}}}, **{"trainer.epochs": 1})
    assert train_in_process(["-c", str(config)]) == 0
    (run,) = run_dirs(tmp_path)
    assert list(load_plain(run / "last.pth")["state_dict"]) == list(Averaged().state_dict())
    assert train_in_process(["-r", str(run), "trainer.epochs=2"]) == 0


# -- 2. atomic saves ---------------------------------------------------------------------------------------
def small_state(version: int) -> dict:
    return {"format_version": 1, "epoch": version, "state_dict": {"w": torch.full((64,), float(version))}}


def test_save_writes_a_temporary_file_then_renames_it(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint(small_state(1), path)
    before = path.read_bytes()
    renames = []
    real_replace = os.replace

    def spy(source, target):
        source, target = Path(source), Path(target)
        renames.append((source, target))
        # At the moment of the rename the new file is complete and the old one untouched.
        assert load_checkpoint(source)["epoch"] == 2
        assert target.read_bytes() == before
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", spy)
    save_checkpoint(small_state(2), path)

    assert renames == [(tmp_path / "last.pth.tmp", path)]
    assert load_checkpoint(path)["epoch"] == 2
    assert load_plain(path)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def crash_at_rename(monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("simulated crash at the rename")

    monkeypatch.setattr(os, "replace", fail)


def crash_mid_write(monkeypatch):
    """The temporary file holds half the bytes when the 'crash' happens."""
    real_fsync = os.fsync

    def fail(fd):
        if os.path.islink(f"/proc/self/fd/{fd}") and os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            raise OSError("simulated crash while writing")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fail)


@pytest.mark.parametrize("crash", [crash_at_rename, crash_mid_write], ids=["at rename", "mid write"])
def test_a_crash_mid_save_leaves_the_previous_file_intact(tmp_path, monkeypatch, crash):
    path = tmp_path / "last.pth"
    save_checkpoint(small_state(1), path)
    before = path.read_bytes()

    crash(monkeypatch)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(small_state(2), path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    checkpoint = load_checkpoint(path)
    assert checkpoint["epoch"] == 1 and torch.equal(checkpoint["state_dict"]["w"], torch.full((64,), 1.0))
    assert load_plain(path)["epoch"] == 1
    # What the crash left behind is a temporary file, which the next run removes.
    clean_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_a_crash_while_linking_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    best = tmp_path / "model_best.pth"
    save_checkpoint(small_state(1), best)
    save_checkpoint(small_state(2), tmp_path / "last.pth")
    crash_at_rename(monkeypatch)
    with pytest.raises(OSError, match="simulated crash"):
        link_checkpoint(tmp_path / "last.pth", best)
    monkeypatch.undo()
    assert load_checkpoint(best)["epoch"] == 1
    link_checkpoint(tmp_path / "last.pth", best)
    assert load_checkpoint(best)["epoch"] == 2


def save_forever(path: str, versions) -> None:
    """Save a 16 MB checkpoint again and again, sending the number of each one saved."""
    big = torch.arange(2_000_000, dtype=torch.float64)
    version = 0
    while True:
        version += 1
        save_checkpoint({"format_version": 1, "version": version, "data": big + version}, path)
        versions.send(version)


@pytest.mark.slow
def test_sigkill_during_saves_always_leaves_a_loadable_file(tmp_path):
    """A process saving in a loop is killed at (seeded) random moments: the file always loads."""
    rng = random.Random(0)
    path = tmp_path / "last.pth"
    fork = multiprocessing.get_context("fork")  # a copy of this process: torch is imported already
    for _ in range(3):
        versions, sender = fork.Pipe(duplex=False)
        process = fork.Process(target=save_forever, args=(str(path), sender), daemon=True)
        process.start()
        try:
            assert versions.poll(60) and versions.recv() >= 1, "the first save did not finish"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            process.kill()
            process.join()
        assert process.exitcode == -signal.SIGKILL
        checkpoint = load_checkpoint(path)
        assert checkpoint["version"] >= 1
        expected = torch.arange(2_000_000, dtype=torch.float64) + checkpoint["version"]
        assert torch.equal(checkpoint["data"], expected)
        clean_temp_files(tmp_path)


# -- 3. damaged checkpoints -------------------------------------------------------------------------------
def storage_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start, size) of the stored tensor data in a torch.save archive (stored entries, no compression)."""
    import io

    spans = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if "/data/" in info.filename:
                header = data[info.header_offset : info.header_offset + 30]
                name_length = int.from_bytes(header[26:28], "little")
                extra_length = int.from_bytes(header[28:30], "little")
                spans.append((info.header_offset + 30 + name_length + extra_length, info.file_size))
    return spans


def flip(data: bytes, *positions: int) -> bytes:
    damaged = bytearray(data)
    for position in positions:
        damaged[position] ^= 0x5A
    return bytes(damaged)


def inside_tensor_data(data: bytes) -> int:
    start, size = max(storage_offsets(data), key=lambda span: span[1])
    return start + size // 2


DAMAGE = {
    "cut in half": lambda data: data[: len(data) // 2],
    "last byte missing": lambda data: data[:-1],
    "byte flipped in tensor data": lambda data: flip(data, inside_tensor_data(data)),
    "byte flipped in the middle": lambda data: flip(data, len(data) // 2),
    "byte flipped in the pickle": lambda data: flip(data, data.index(b"data.pkl") + 60),
    "byte flipped in the checksum": lambda data: flip(data, len(data) - 5),
    "bytes flipped at several positions": lambda data: flip(data, 100, inside_tensor_data(data), len(data) // 2,
                                                            len(data) - 100),
    "random bytes": lambda data: random.Random(0).randbytes(len(data)),
    "empty file": lambda data: b"",
    "JSON renamed .pth": lambda data: json.dumps(TINY_CONFIG).encode(),
}
CLI_DAMAGE = ["cut in half", "bytes flipped at several positions", "random bytes", "empty file", "JSON renamed .pth"]


def test_tensor_data_offsets_point_into_the_weights(runs):
    """The helper that aims a flip at tensor data finds the bytes of a stored tensor."""
    data = (runs.run / "last.pth").read_bytes()
    start, size = max(storage_offsets(data), key=lambda span: span[1])
    flat = [t.flatten() for t in load_plain(runs.run / "last.pth")["state_dict"].values()]
    assert any(t.numel() * t.element_size() == size for t in flat)
    assert 0 < start < start + size < len(data)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_load_checkpoint_names_a_damaged_file(runs, tmp_path, damage):
    path = tmp_path / "damaged.pth"
    path.write_bytes(DAMAGE[damage]((runs.run / "last.pth").read_bytes()))

    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_load_checkpoint_names_a_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="gone.pth"):
        load_checkpoint(tmp_path / "gone.pth")


@pytest.fixture(scope="module")
def damaged_cli(runs, tmp_path_factory):
    """``train.py -r FILE`` on each damaged file (a lone file), and on one beside its run's config.json."""
    data = (runs.run / "last.pth").read_bytes()
    paths = {}
    for damage in CLI_DAMAGE:
        paths[damage] = tmp_path_factory.mktemp("damaged") / "model.pth"
        paths[damage].write_bytes(DAMAGE[damage](data))
    in_run = tmp_path_factory.mktemp("damaged_run")
    shutil.copy(runs.run / "config.json", in_run / "config.json")
    paths["in a run directory"] = in_run / "last.pth"
    paths["in a run directory"].write_bytes(DAMAGE["cut in half"](data))
    results = {key: train("-r", str(path), check=False) for key, path in paths.items()}
    return {key: (paths[key], results[key]) for key in paths}


@pytest.mark.slow
@pytest.mark.parametrize("damage", [*CLI_DAMAGE, "in a run directory"])
def test_resume_from_a_damaged_file_is_one_error_line(damaged_cli, damage):
    path, result = damaged_cli[damage]
    assert_one_error_line(result, str(path))
    written = {p.name for p in path.parent.iterdir()} - {path.name, "config.json"}
    assert not written, f"the failed resume wrote {written}"


FALLBACK = {
    # scenario: (files cut in half, expected resume file names, files to leave as stale temporaries)
    "last.pth cut in half": (["last.pth"], {"checkpoint-epoch2.pth", "model_best.pth"}, []),
    "every epoch-2 file cut in half": (["last.pth", "checkpoint-epoch2.pth", "model_best.pth"],
                                       {"checkpoint-epoch1.pth"}, []),
    "stale last.pth.tmp": ([], {"last.pth"}, ["last.pth.tmp", "checkpoint-epoch1.pth.tmp"]),
}


@pytest.fixture(scope="module")
def fallback_runs(runs, tmp_path_factory):
    """``train.py -r RUN_DIR trainer.epochs=3`` on copies of the 2-epoch run, damaged in different ways."""
    run_copies = {}
    for scenario, (damaged, _, stale) in FALLBACK.items():
        run = tmp_path_factory.mktemp("fallback") / "run"
        shutil.copytree(runs.run, run)
        for name in damaged:
            data = (run / name).read_bytes()
            (run / name).unlink()  # a new file: other names that are links of the same file stay intact
            (run / name).write_bytes(data[: len(data) // 2])
        for name in stale:
            (run / name).write_bytes((run / "last.pth").read_bytes()[:1000])
        run_copies[scenario] = run
    every = tmp_path_factory.mktemp("fallback") / "run"
    shutil.copytree(runs.run, every)
    for path in every.glob("*.pth"):
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data[: len(data) // 2])
    run_copies["every checkpoint damaged"] = every
    results = {scenario: train("-r", str(run), "trainer.epochs=3", check=False) for scenario, run in run_copies.items()}
    return {scenario: (run_copies[scenario], results[scenario]) for scenario in run_copies}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(FALLBACK))
def test_resume_run_dir_uses_the_newest_checkpoint_that_verifies(runs, fallback_runs, scenario):
    run, result = fallback_runs[scenario]
    damaged, expected_sources, stale = FALLBACK[scenario]
    assert result.returncode == 0, result.stderr + result.stdout
    resumed_from = [line for line in result.stdout.splitlines() if line.startswith("resuming from")]
    assert len(resumed_from) == 1, result.stdout
    assert Path(resumed_from[0].split()[-1]).name in expected_sources, resumed_from[0]
    for name in damaged:
        assert any("skipping" in line and str(run / name) in line for line in result.stdout.splitlines()), \
            f"no warning names {name}:\n{result.stdout}"
    for name in stale:
        assert not (run / name).exists(), f"{name} was left behind"
        assert any("removing" in line and str(run / name) in line for line in result.stdout.splitlines()), \
            f"no warning names {name}:\n{result.stdout}"
    assert "Traceback" not in result.stderr
    # The run ends exactly where the uninterrupted 3-epoch run ends, each epoch recorded once.
    expected = load_plain(runs.reference / "last.pth")["state_dict"]
    assert_same_tensors(expected, load_plain(run / "last.pth")["state_dict"])
    assert metrics_rows(run) == metrics_rows(runs.reference)
    assert load_checkpoint(run / "last.pth")["epoch"] == 3
    expected = load_plain(runs.reference / "model_best.pth")["state_dict"]
    assert_same_tensors(expected, load_checkpoint(run / "model_best.pth")["state_dict"])


@pytest.mark.slow
def test_resume_run_dir_with_every_checkpoint_damaged_is_one_error_line(fallback_runs):
    run, result = fallback_runs["every checkpoint damaged"]
    assert_one_error_line(result, str(run), "damaged")


# -- 9. an untrusted file never runs code ------------------------------------------------------------
class Payload:
    """Unpickling this runs a shell command: what a malicious "checkpoint" does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_malicious(kind: str, path: Path, marker: Path) -> None:
    state = {"format_version": 1, "arch": "ResNet", "epoch": 1, "state_dict": {}, "payload": Payload(marker)}
    if kind == "torch.save":
        torch.save(state, path)
    elif kind == "torch.save with a valid checksum":  # anyone can compute a SHA-256: it is no signature
        save_checkpoint(state, path)
    elif kind == "legacy torch.save":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as file:
            pickle.dump(state, file)


MALICIOUS = ["torch.save", "torch.save with a valid checksum", "legacy torch.save", "plain pickle"]


@pytest.mark.parametrize("kind", MALICIOUS)
def test_load_checkpoint_refuses_a_file_with_code(tmp_path, kind):
    marker = tmp_path / "owned"
    path = tmp_path / "model.pth"
    write_malicious(kind, path, marker)

    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)
    assert not marker.exists(), "loading the file ran its code"


def test_the_payload_does_run_code_when_loaded_unsafely(tmp_path):
    """Makes sure the files above are dangerous: a full unpickle runs the command."""
    marker = tmp_path / "owned"
    write_malicious("torch.save with a valid checksum", tmp_path / "model.pth", marker)
    torch.load(tmp_path / "model.pth", weights_only=False)
    assert marker.exists()


@pytest.mark.slow
def test_train_refuses_a_file_with_code(runs, tmp_path):
    marker = tmp_path / "owned"
    bare = tmp_path / "downloads" / "model.pth"  # no config.json beside it
    in_run = tmp_path / "run" / "model.pth"  # beside a run's config.json
    for path in (bare, in_run):
        path.parent.mkdir()
        write_malicious("torch.save with a valid checksum", path, marker)
    shutil.copy(runs.run / "config.json", in_run.parent / "config.json")
    config = make_config(tmp_path, **{"trainer.epochs": 1})
    commands = {"-r bare file": ["-r", str(bare)], "-r file in a run": ["-r", str(in_run)],
                "--finetune": ["-c", str(config), "--finetune", str(bare)]}

    results = {name: train(*args, check=False) for name, args in commands.items()}
    for name, result in results.items():
        path = in_run if name == "-r file in a run" else bare
        assert_one_error_line(result, str(path))
    assert not marker.exists(), "train.py ran the code in the file"
    assert not run_dirs(tmp_path), "a run directory was created for a refused checkpoint"
