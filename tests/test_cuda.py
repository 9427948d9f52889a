"""Checks that need a CUDA GPU; they skip without one (benchmarks/gpu_check.sh runs them)."""
import pytest
import torch

from tests.conftest import make_config, run_dirs, run_script

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("amp", ["bf16", "fp16", False])
def test_train_on_cuda_and_load_on_cpu(tmp_path, amp):
    config = make_config(tmp_path, **{"n_gpu": 1, "trainer.amp": amp, "trainer.channels_last": True,
                                      "data_loader.args.num_workers": 2})
    run_script("train.py", "-c", str(config), check=True)
    (run,) = run_dirs(tmp_path)
    checkpoint = torch.load(run / "last.pth", weights_only=True, map_location="cpu")
    assert all(t.device.type == "cpu" for t in checkpoint["state_dict"].values())
    assert checkpoint["rng_states"][0]["cuda"], "the CUDA RNG state is saved"
    if amp == "fp16":
        assert checkpoint["scaler"]["scale"] > 0, "the fp16 GradScaler state is saved"
    assert checkpoint["metrics"]["val_accuracy"] > 0.5


def test_resume_and_deterministic_on_cuda(tmp_path):
    config = make_config(tmp_path, **{"n_gpu": 1, "deterministic": True, "trainer.epochs": 1})
    run_script("train.py", "-c", str(config), check=True)
    (run,) = run_dirs(tmp_path)
    run_script("train.py", "-r", str(run), "trainer.epochs=2", check=True)
    checkpoint = torch.load(run / "last.pth", weights_only=True, map_location="cpu")
    assert checkpoint["epoch"] == 2


def test_inference_on_cuda(tmp_path):
    config = make_config(tmp_path, **{"n_gpu": 1, "trainer.amp": "bf16"})
    run_script("train.py", "-c", str(config), check=True)
    (run,) = run_dirs(tmp_path)
    result = run_script("inference.py", "--resume", str(run / "model_best.pth"), check=True)
    assert "accuracy" in result.stdout


@pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA GPU")
def test_torchrun_nccl(tmp_path):
    processes = min(2, torch.cuda.device_count())
    config = make_config(tmp_path, **{"n_gpu": 1})
    run_script("-m", "torch.distributed.run", f"--nproc_per_node={processes}", "train.py", "-c", str(config),
               check=True)
    assert len(run_dirs(tmp_path)) == 1


def test_compile_on_cuda(tmp_path):
    config = make_config(tmp_path, **{"n_gpu": 1, "trainer.compile": True, "trainer.epochs": 1})
    run_script("train.py", "-c", str(config), check=True, timeout=600)
    (run,) = run_dirs(tmp_path)
    keys = torch.load(run / "last.pth", weights_only=True)["state_dict"].keys()
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in keys)


def test_a_snapshot_of_cuda_state_lands_in_reused_pinned_buffers():
    from utils.checkpoint.snapshot import StateSnapshot

    weights = torch.randn(1000, 100, device="cuda")
    snapshot = StateSnapshot()
    first = snapshot.copy({"w": weights, "step": torch.tensor(3.0)})
    expected = weights.cpu()
    weights.add_(1)  # the next step, after the save returned
    assert first["w"].device.type == "cpu" and first["w"].is_pinned() and torch.equal(first["w"], expected)
    second = snapshot.copy({"w": weights, "step": torch.tensor(4.0)})
    assert second["w"].data_ptr() == first["w"].data_ptr(), "the pinned buffer is reused"
    assert torch.equal(second["w"], weights.cpu())


def test_on_device_batches_on_cuda_match_the_cpu_path():
    from base.base_data_loader import BaseDataLoader
    from dataset.datasets import DigitsDataset

    args = {"batch_size": 64, "validation_split": 0.2, "seed": 3}
    cpu, device = BaseDataLoader(DigitsDataset(), **args), BaseDataLoader(DigitsDataset(), **args, on_device=True)
    cpu.set_epoch(2), device.set_epoch(2)
    for (x, y), (dx, dy) in zip(cpu, device, strict=True):
        assert dx.device.type == "cuda" and torch.equal(x, dx.cpu()) and torch.equal(y, dy.cpu())


def test_on_device_with_background_checkpoints_resumes_bitwise_on_cuda(tmp_path):
    (tmp_path / "straight").mkdir(), (tmp_path / "split").mkdir()
    straight = make_config(tmp_path / "straight", **{"n_gpu": 1, "deterministic": True,
                                                     "data_loader.args.on_device": True})
    split = make_config(tmp_path / "split", **{"n_gpu": 1, "deterministic": True, "trainer.epochs": 1,
                                               "data_loader.args.on_device": True})
    run_script("train.py", "-c", str(straight), check=True)
    run_script("train.py", "-c", str(split), check=True)
    run_script("train.py", "-r", str(run_dirs(tmp_path / "split")[0]), "trainer.epochs=2", check=True)
    expected, actual = (torch.load(run_dirs(tmp_path / name)[0] / "last.pth", weights_only=True)["state_dict"]
                        for name in ("straight", "split"))
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
