"""What a user waits for on one GPU: wall time per epoch, the template beside a hand-written loop.

    python benchmarks/gpu_throughput.py             # on a CUDA machine, about 4 minutes
    python benchmarks/gpu_throughput.py --smoke     # a tiny model on the CPU, to check the script

Two models in bf16: the template's CIFAR-sized ResNet-18 ([2, 2, 2, 2] blocks, widths 64 to 512) on
3x32x32 images in batches of 512, and ResNet-50 on 3x224x224 images in batches of 256. Each is
trained with its data read by worker processes (random crop and flip of each image on the CPU) and
held on the device (``data_loader.args.on_device``: the same crop and flip, on whole batches on the
GPU), 10 % held out for validation.

Per-epoch wall time counts everything between the end of one epoch and the end of the next:
training, validation, and for the template its defaults (metrics, metrics.csv, TensorBoard, the
progress bar and a checkpoint every epoch) and for the hand-written loop a ``torch.save`` of its
model and optimizer every epoch. The first epoch (cuDNN autotuning, workers starting) is left out;
the figure is the median of the others. ``data_wait`` is the share of the epoch spent waiting for
the next batch (the template's log; measured the same way around the hand-written loop's loader).
"""
import argparse
import contextlib
import copy
import io
import statistics
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
from utils.data.timing import EpochClock  # noqa: E402
from utils.seeding import seed_everything  # noqa: E402

RESNET18 = {"type": "ResNet", "args": {"num_blocks": [2, 2, 2, 2], "widths": [64, 128, 256, 512], "num_classes": 10,
                                       "in_channels": 3, "stem": "small"}}
RESNET50 = {"type": "ResNet", "args": {"num_blocks": [3, 4, 6, 3], "block": "bottleneck", "num_classes": 1000,
                                       "in_channels": 3, "widths": [64, 128, 256, 512], "stem": "imagenet"}}
SMOKE = {"type": "ResNet", "args": {"num_blocks": [1, 1], "num_classes": 10, "in_channels": 3,
                                    "widths": [8, 16], "stem": "small"}}
# (label, arch, image size, batch size, samples)
MODELS = [("ResNet-18 CIFAR 32x32", RESNET18, 32, 512, 50_000), ("ResNet-50 224x224", RESNET50, 224, 256, 11_520)]


def config_for(arch: dict, image: int, batch_size: int, samples: int, workers: int, on_device: bool,
               epochs: int, n_gpu: int) -> dict:
    augment = [{"type": "RandomCrop", "args": {"size": image, "padding": image // 8}},
               {"type": "RandomHorizontalFlip"}]
    return {
        "name": "GpuThroughput", "n_gpu": n_gpu, "seed": 0, "arch": arch,
        "dataset": {"type": "SyntheticDataset", "args": {"num_samples": samples, "shape": [3, image, image],
                                                         "num_classes": arch["args"]["num_classes"],
                                                         "train_transform": augment}},
        "data_loader": {"type": "ImageDataLoader", "args": {"batch_size": batch_size, "validation_split": 0.1,
                                                            "num_workers": workers, "drop_last": True,
                                                            "on_device": on_device}},
        "optimizer": {"type": "SGD", "args": {"lr": 0.01, "momentum": 0.9}},
        "loss": "cross_entropy", "metrics": ["accuracy"],
        "trainer": {"epochs": epochs, "amp": "bf16"},  # otherwise the defaults
    }


def template_run(config: dict, save_dir: str) -> tuple[list[float], list[float], int]:
    """(wall seconds of each epoch after the first, data_wait of those epochs, training images per epoch)."""
    config = copy.deepcopy(config)
    config["trainer"]["save_dir"] = save_dir
    parser = ConfigParser(config)
    seed_everything(0)
    trainer = build_trainer(parser)
    ends, waits = [], []

    def epoch_end(epoch: int, log: dict) -> None:  # after the epoch's checkpoint is saved
        ends.append(time.perf_counter())
        waits.append(log["data_wait"])

    trainer.epoch_callbacks.append(epoch_end)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        parser.start_run()  # its log goes where the console is now: nowhere
        trainer.train()
    images = len(trainer.data_loader) * trainer.data_loader.batch_size
    return [b - a for a, b in zip(ends, ends[1:])], waits[1:], images


def plain_run(config: dict, device: torch.device, save_dir: str) -> tuple[list[float], list[float], int]:
    """The same work as a hand-written loop that saves its model and optimizer every epoch."""
    parser = ConfigParser(copy.deepcopy(config))
    seed_everything(0)
    loader = parser.init_data_loader("data_loader", module_data)
    valid_loader = loader.split_validation()
    model = parser.init_obj("arch", module_arch).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ends, waits, logged, clock = [], [], [], EpochClock()
    for epoch in range(1, config["trainer"]["epochs"] + 1):
        loader.set_epoch(epoch)
        clock.start()
        model.train()
        for data, target in clock.timed(loader):
            data, target = data.to(device, non_blocking=True), target.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        correct = torch.zeros((), device=device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            for data, target in clock.timed(valid_loader):
                data, target = data.to(device, non_blocking=True), target.to(device, non_blocking=True)
                correct += (model(data).argmax(1) == target).sum()
        logged.append((loss.item(), int(correct)))  # what its log line would print
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, Path(save_dir) / "plain.pth")
        waits.append(clock.stop()["data_wait"])
        ends.append(time.perf_counter())
    return [b - a for a, b in zip(ends, ends[1:])], waits[1:], len(loader) * loader.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is left out")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--models", default="all", choices=["all", "resnet18", "resnet50"])
    parser.add_argument("--smoke", action="store_true", help="a tiny model and images, on the CPU")
    args = parser.parse_args()
    setup_logging(None, verbosity=0)
    if args.smoke:
        models, epochs, workers, n_gpu = [("tiny ResNet 32x32 (smoke)", SMOKE, 32, 16, 160)], 3, 0, 0
    else:
        if not torch.cuda.is_available():
            sys.exit("error: no CUDA GPU; use --smoke to check the script on the CPU")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        models = MODELS if args.models == "all" else [MODELS[0 if args.models == "resnet18" else 1]]
        epochs, workers, n_gpu = args.epochs, args.workers, 1
    device = torch.device("cuda" if n_gpu else "cpu")
    name = torch.cuda.get_device_name() if n_gpu else "CPU (smoke run)"
    print(f"{name}, torch {torch.__version__}, bf16, {workers} workers, median of epochs 2 to {epochs}")
    print(f"{'model, data':<40}{'path':>14}{'s/epoch':>9}{'img/s':>9}{'data_wait':>11}{'ratio':>8}")
    images_per_second, ratios = {}, {}
    with tempfile.TemporaryDirectory() as save_dir:
        for label, arch, image, batch_size, samples in models:
            for on_device in (False, True):
                config = config_for(arch, image, batch_size, samples, workers, on_device, epochs, n_gpu)
                data = "on the device" if on_device else f"{workers} workers"
                results = {"template": template_run(config, save_dir), "hand-written": plain_run(config, device,
                                                                                                save_dir)}
                plain_epoch = statistics.median(results["hand-written"][0])
                for path, (times, waits, images) in results.items():
                    epoch = statistics.median(times)
                    images_per_second[label, on_device, path] = images / epoch
                    if path == "template":
                        ratios[label, on_device] = epoch / plain_epoch
                    print(f"{label + ', ' + data:<40}{path:>14}{epoch:>9.3f}{images / epoch:>9.0f}"
                          f"{statistics.median(waits):>11.3f}{epoch / plain_epoch:>8.3f}", flush=True)
    for label, *_ in models:
        speedup = images_per_second[label, True, "template"] / images_per_second[label, False, "template"]
        print(f"{label}: template / hand-written epoch, {workers} workers: {ratios[label, False]:.3f} "
              f"(target <= 1.05: {verdict(ratios[label, False] <= 1.05)}); on-device data / worker processes, "
              f"template images per second: {speedup:.2f}x (target >= 1.5: {verdict(speedup >= 1.5)})")


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    main()
