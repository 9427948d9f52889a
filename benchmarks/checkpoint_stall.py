"""What a checkpoint every epoch costs the training loop, with and without ``trainer.async_checkpoint``.

    OMP_NUM_THREADS=1 python benchmarks/checkpoint_stall.py               # the figures in README (minutes)
    OMP_NUM_THREADS=1 python benchmarks/checkpoint_stall.py --smoke       # a tiny model, seconds

A ResNet-18-sized model (11M parameters, [2, 2, 2, 2] blocks of widths 64 to 512) trains on a few
hundred 1x8x8 digits, so that a checkpoint (about 90 MB of weights and SGD momentum: serialized,
checksummed, written and fsynced) is a large share of an epoch. Four paths train the same model on
the same data with the same optimizer, and validate every epoch:

- the template with its defaults: a checkpoint every epoch, written in the background;
- the template with ``trainer.async_checkpoint: false``: the loop waits for each write;
- a hand-written loop that saves nothing;
- a hand-written loop that saves its model and optimizer every epoch with ``torch.save``.

Training runs on one thread (OMP_NUM_THREADS=1), so the checkpoint writer has the second core. Each
path's figure is the median wall time of an epoch (from the end of one epoch, its checkpoint saved,
to the end of the next; the first epoch is left out), and each ratio is the median over rounds of the
ratio within a round, the paths alternating, so that the machine's drift between rounds cancels.
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
from utils.seeding import seed_everything  # noqa: E402

RESNET18 = {"type": "ResNet", "args": {"num_blocks": [2, 2, 2, 2], "widths": [64, 128, 256, 512],
                                       "num_classes": 10, "in_channels": 1, "stem": "small"}}
SMOKE = {"type": "ResNet", "args": {"num_blocks": [1, 1], "widths": [8, 16], "num_classes": 10,
                                    "in_channels": 1, "stem": "small"}}


def base_config(arch: dict, epochs: int) -> dict:
    return {
        "name": "CheckpointStall", "n_gpu": 0, "seed": 0, "arch": arch,
        "dataset": {"type": "DigitsDataset", "args": {"train": False}},  # the 360 test digits
        "data_loader": {"type": "DigitsDataLoader", "args": {"batch_size": 64, "validation_split": 0.1}},
        "optimizer": {"type": "SGD", "args": {"lr": 0.01, "momentum": 0.9}},
        "loss": "cross_entropy", "metrics": ["accuracy"],
        "trainer": {"epochs": epochs},  # the defaults: monitor min val_loss, TensorBoard, progress bar
    }


def clocks() -> tuple[float, float]:
    """(wall seconds, CPU seconds of the calling thread): the training loop's own time, whatever else runs."""
    return time.perf_counter(), time.thread_time()


def per_epoch(ends: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, training-thread CPU) seconds of each epoch but the first, from the clocks at each epoch's end."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(ends, ends[1:])]


def template_epochs(config: dict, save_dir: str, async_checkpoint: bool) -> list[tuple[float, float]]:
    """Each epoch but the first, checkpoint included, as the training loop sees it."""
    config = copy.deepcopy(config)
    config["trainer"] |= {"save_dir": save_dir, "async_checkpoint": async_checkpoint}
    parser = ConfigParser(config)
    seed_everything(0)
    trainer = build_trainer(parser)
    ends = []
    trainer.epoch_callbacks.append(lambda epoch, log: ends.append(clocks()))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        parser.start_run()  # its log goes where the console is now: nowhere
        trainer.train()  # its log and progress bar, as a user sees them, but not here
    return per_epoch(ends)


def plain_epochs(config: dict, save_dir: str, save: bool) -> list[tuple[float, float]]:
    """The same training as a hand-written loop, saving nothing or ``torch.save`` every epoch."""
    parser = ConfigParser(copy.deepcopy(config))
    seed_everything(0)
    loader = parser.init_data_loader("data_loader", module_data)
    valid_loader = loader.split_validation()
    model = parser.init_obj("arch", module_arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ends = []
    for epoch in range(1, config["trainer"]["epochs"] + 1):
        loader.set_epoch(epoch)
        model.train()
        for data, target in loader:
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        with torch.inference_mode():
            int(sum((model(data).argmax(1) == target).sum() for data, target in valid_loader))  # as a log would
        if save:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, Path(save_dir) / "plain.pth")
        ends.append(clocks())
    return per_epoch(ends)


PATHS = {
    "template, async_checkpoint (default)": lambda c, d: template_epochs(c, d, True),
    "template, async_checkpoint false": lambda c, d: template_epochs(c, d, False),
    "hand-written, saves nothing": lambda c, d: plain_epochs(c, d, False),
    "hand-written, torch.save every epoch": lambda c, d: plain_epochs(c, d, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--smoke", action="store_true", help="a tiny model, 1 round of 3 epochs")
    args = parser.parse_args()
    setup_logging(None, verbosity=0)
    arch, rounds, epochs = (SMOKE, 1, 3) if args.smoke else (RESNET18, args.rounds, args.epochs)
    config = base_config(arch, epochs)
    parameters = sum(p.numel() for p in ConfigParser(copy.deepcopy(config)).init_obj("arch", module_arch).parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} training thread(s), {parameters / 1e6:.1f}M "
          f"parameters, {rounds} rounds of {epochs} epochs; wall seconds per epoch, checkpoint included")
    medians = {name: [] for name in PATHS}  # per round: the median (wall, thread CPU) of an epoch
    with tempfile.TemporaryDirectory() as save_dir:
        for _ in range(rounds):
            for name, path in PATHS.items():
                epochs_measured = path(config, save_dir)
                medians[name].append([statistics.median(e[k] for e in epochs_measured) for k in (0, 1)])
    reference = medians["hand-written, saves nothing"]
    ratios = {name: [statistics.median(v[k] / r[k] for v, r in zip(values, reference)) for k in (0, 1)]
              for name, values in medians.items()}
    print(f"{'path':<40}{'wall s':>8}{'ratio':>7}{'thread CPU s':>14}{'ratio':>7}")
    for name, values in medians.items():
        wall, cpu = (statistics.median(v[k] for v in values) for k in (0, 1))
        print(f"{name:<40}{wall:>8.3f}{ratios[name][0]:>7.3f}{cpu:>14.3f}{ratios[name][1]:>7.3f}")
    for k, clock in enumerate(("wall time", "training-thread CPU time")):
        ratio = ratios["template, async_checkpoint (default)"][k]
        print(f"{clock}: defaults vs a hand-written loop that saves nothing: {ratio:.3f}, target <= 1.08: "
              f"{'met' if ratio <= 1.08 else 'MISSED'}")

if __name__ == "__main__":
    main()
