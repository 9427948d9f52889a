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
