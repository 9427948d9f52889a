"""Training images per second of a ResNet-50-sized model on synthetic 3x224x224 data, on one GPU.

    python benchmarks/gpu_throughput.py             # on a CUDA machine, about 3 minutes
    python benchmarks/gpu_throughput.py --smoke     # a tiny model on the CPU, to check the script

Three settings: fp32, bf16 autocast, and bf16 + channels_last + torch.compile. Each is measured for
the template's Trainer (defaults on: metrics, metrics.csv, checkpoint every epoch; no validation)
and for a hand-written loop with the same model, data loader and optimizer, over the second of two
epochs (the first one warms up cuDNN and compiles).
"""
import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import data_loader.data_loaders as module_data  # noqa: E402
import model.model as module_arch  # noqa: E402
from config_parser import ConfigParser  # noqa: E402
from logger.logger import setup_logging  # noqa: E402
from train import build_trainer  # noqa: E402
from utils.seeding import seed_everything  # noqa: E402

RESNET50 = {"type": "ResNet", "args": {"num_blocks": [3, 4, 6, 3], "block": "bottleneck", "num_classes": 1000,
                                       "in_channels": 3, "widths": [64, 128, 256, 512], "stem": "imagenet"}}
SMOKE = {"type": "ResNet", "args": {"num_blocks": [1, 1], "num_classes": 10, "in_channels": 3,
                                    "widths": [8, 16], "stem": "imagenet"}}


def base_config(arch: dict, samples: int, image: int, batch_size: int, workers: int, n_gpu: int) -> dict:
    return {
        "name": "GpuThroughput", "n_gpu": n_gpu, "seed": 0, "arch": arch,
        "dataset": {"type": "SyntheticDataset", "args": {"num_samples": samples, "shape": [3, image, image],
                                                         "num_classes": arch["args"]["num_classes"]}},
        "data_loader": {"type": "ImageDataLoader", "args": {"batch_size": batch_size, "validation_split": 0,
                                                            "num_workers": workers, "drop_last": True}},
        "optimizer": {"type": "SGD", "args": {"lr": 0.01, "momentum": 0.9}},
        "loss": "cross_entropy", "metrics": ["accuracy"],
        "trainer": {"epochs": 2, "monitor": "off", "tensorboard": False, "progress_bar": False, "verbosity": 0},
    }


def template_images_per_second(config: dict, save_dir: str) -> float:
    config = copy.deepcopy(config)
    config["trainer"]["save_dir"] = save_dir
    parser = ConfigParser(config)
    seed_everything(0)
    trainer = build_trainer(parser)
    parser.start_run()
    log = trainer.train()  # the last epoch's log: its epoch_time covers training only (no validation)
    return len(trainer.data_loader) * trainer.data_loader.batch_size / log["epoch_time"]


def plain_images_per_second(config: dict, device: torch.device) -> float:
    """The same work as a hand-written loop."""
    options = config["trainer"]
    parser = ConfigParser(copy.deepcopy(config))
    seed_everything(0)
    loader = parser.init_data_loader("data_loader", module_data)
    model = parser.init_obj("arch", module_arch).to(device)
    if options.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if options.get("compile") else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = options.get("amp") == "bf16"
    for epoch in range(2):
        loader.set_epoch(epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        correct = torch.zeros((), device=device)
        for data, target in loader:
            data, target = data.to(device, non_blocking=True), target.to(device, non_blocking=True)
            if options.get("channels_last"):
                data = data.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                output = step_model(data)
                loss = F.cross_entropy(output, target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            correct += (output.argmax(1) == target).sum()
        correct.item()
        seconds = time.perf_counter() - started
    return len(loader) * loader.batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="batches per epoch")
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--smoke", action="store_true", help="a tiny model and images, on the CPU")
    args = parser.parse_args()
    setup_logging(None, verbosity=0)
    if args.smoke:
        arch, image, batch_size, batches, workers, n_gpu = SMOKE, 32, 8, 3, 0, 0
        settings = [("fp32", {}), ("bf16", {"amp": "bf16"})]
    else:
        if not torch.cuda.is_available():
            sys.exit("error: no CUDA GPU; use --smoke to check the script on the CPU")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        arch, image, batch_size, batches, workers, n_gpu = (RESNET50, 224, args.batch_size, args.batches,
                                                            args.workers, 1)
        settings = [("fp32 (TF32)", {}), ("bf16", {"amp": "bf16"}),
                    ("bf16 + channels_last + compile", {"amp": "bf16", "channels_last": True, "compile": True})]
    device = torch.device("cuda" if n_gpu else "cpu")
    config = base_config(arch, batches * batch_size, image, batch_size, workers, n_gpu)
    name = torch.cuda.get_device_name() if n_gpu else "CPU (smoke run)"
    print(f"{name}, torch {torch.__version__}, batch {batch_size}, {batches} batches per epoch, "
          f"{workers} workers; images per second, second epoch")
    print(f"{'setting':<34}{'template':>10}{'hand-written':>14}{'ratio':>8}")
    with tempfile.TemporaryDirectory() as save_dir:
        for label, options in settings:
            setting = copy.deepcopy(config)
            setting["trainer"] |= options
            template = template_images_per_second(setting, save_dir)
            plain = plain_images_per_second(setting, device)
            print(f"{label:<34}{template:>10.0f}{plain:>14.0f}{template / plain:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
