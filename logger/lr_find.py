"""What ``train.py --lr-find`` writes: the curve as CSV and a picture in ``<save_dir>/<name>/lr_find/``,
and the suggested rate printed as the override to use. No run directory is created."""
import csv
import logging
import math
from datetime import datetime
from pathlib import Path

from utils import distributed as dist

logger = logging.getLogger(__name__)


def report_lr_find(result, folder: Path, groups: list[dict], base_lr: float) -> Path | None:
    """Write ``<stamp>.csv`` and ``<stamp>.png`` in ``folder`` and print the suggestion (main process only).
    ``groups`` are the optimizer's parameter groups, ``base_lr`` the config's rate: each group's rate at
    the suggestion keeps its ratio to it. Returns the CSV's path.

    Examples:
        >>> report_lr_find(lr_range_test(trainer), Path("saved/Digits_ResNet/lr_find"), optimizer.param_groups, 0.003)
    """
    if not dist.is_main_process():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / datetime.now().strftime("%Y%m%d_%H%M%S")
    with open(stem.with_suffix(".csv"), "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        writer.writerows(zip(range(len(result.lrs)), result.lrs, result.losses, result.smoothed))
    draw_curve(result, stem.with_suffix(".png"))
    stop = "stopped early: the loss diverged" if result.stopped_early else "ran every step"
    print(f"learning-rate range test: {len(result.lrs)} steps from {result.lrs[0]:.3g} to {result.lrs[-1]:.3g} "
          f"({stop}); curve: {stem.with_suffix('.csv')}, {stem.with_suffix('.png')}")
    if result.suggestion is None:
        print("no suggestion: too few steps before the loss diverged; lower --lr-min or raise --steps")
        return stem.with_suffix(".csv")
    print(f"suggested learning rate ({result.rule}): {result.suggestion:.3g}")
    named = {str(group.get("name", i)): group.get("initial_lr", group["lr"]) / base_lr
             for i, group in enumerate(groups)}
    if len(set(named.values())) > 1:
        print("parameter groups at that rate: " + ", ".join(f"{name} {result.suggestion * ratio:.3g}"
                                                           for name, ratio in named.items()))
    print(f"override: optimizer.args.lr={result.suggestion:.3g}")
    return stem.with_suffix(".csv")


def draw_curve(result, path: Path) -> None:
    """The smoothed and raw loss against the rate (log scale), the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    axes.plot(result.lrs, result.smoothed, label="smoothed loss")
    if result.suggestion is not None:
        axes.axvline(result.suggestion, color="red", linestyle="--", label=f"{result.suggestion:.3g} ({result.rule})")
    axes.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
    finite = [value for value in result.smoothed if math.isfinite(value)]
    if finite:  # the diverged end would squash the curve: show up to 4x the best
        low, high = min(finite), max(finite[0], min(finite) * 4)
        axes.set_ylim(low - 0.05 * (high - low) - 1e-6, high + 0.05 * (high - low) + 1e-6)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
