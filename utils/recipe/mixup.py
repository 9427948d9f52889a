"""``trainer.mixup``: MixUp and CutMix on each training batch, with torchvision.transforms.v2.

The loss gets soft targets (class probabilities, label smoothing folded in); the training metrics
keep the hard labels; validation is untouched. The random draws of a batch come from (seed, epoch,
batch index, process) alone, so a resumed run mixes exactly as one never stopped.
"""
import torch
import torch.nn.functional as F

from utils.errors import ConfigError
from utils.seeding import sample_seeds


class BatchMixer:
    """MixUp / CutMix of a batch, as timm's ``Mixup`` with torchvision's transforms.

    Args:
        num_classes: number of classes (the soft targets' width).
        mixup_alpha / cutmix_alpha: the Beta(alpha, alpha) of each; 0 turns that one off.
        prob: the probability that a batch is mixed at all.
        switch_prob: the probability of CutMix rather than MixUp when both are on.
        off_epoch: the last epoch that mixes (null: every epoch); later epochs get plain (smoothed) targets.
        label_smoothing: folded into the soft targets.
        seed: the run's seed.

    Examples:
        >>> mixer = BatchMixer(num_classes=10, mixup_alpha=0.2, cutmix_alpha=1.0, seed=0)
        >>> inputs, soft_targets = mixer(inputs, targets, epoch=1, batch_idx=0)
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, off_epoch: int | None = None, label_smoothing: float = 0.1,
                 seed: int = 0, rank: int = 0):
        from torchvision.transforms import v2

        self.num_classes, self.prob, self.off_epoch = num_classes, prob, off_epoch
        self.label_smoothing, self.seed, self.rank = label_smoothing, seed, rank
        choices, weights = [], []
        if cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
            weights.append(switch_prob if mixup_alpha > 0 else 1.0)
        if mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
            weights.append(1.0 - switch_prob if cutmix_alpha > 0 else 1.0)
        self.mix = v2.RandomChoice(choices, p=weights) if choices else None

    def __call__(self, data: torch.Tensor, target: torch.Tensor, epoch: int, batch_idx: int,
                 rows: torch.Tensor | None = None):
        """(mixed inputs, soft targets of shape (batch, num_classes)) for one training batch.

        ``rows`` (batch, K), e.g. a teacher's soft labels, are mixed as the labels are, with the same
        pairs and lambda, and returned third: (inputs, soft targets, mixed rows).
        """
        if target.ndim != 1 or target.is_floating_point():
            raise ConfigError("trainer.mixup", f"needs class indices as targets, got a {target.dtype} tensor "
                                               f"of shape {tuple(target.shape)}")
        if self.mix is not None and data.ndim != 4:
            raise ConfigError("trainer.mixup", f"MixUp and CutMix (torchvision's) mix image batches (N, C, H, W), "
                                               f"but the batches are {data.ndim}-D: remove it for this data")
        mixing = self.mix is not None and (self.off_epoch is None or epoch <= self.off_epoch)
        seed = int(sample_seeds(self.seed, epoch, [batch_idx * 65536 + self.rank])[0])
        shape = data.shape
        # The draws (Beta, the choice, CutMix's box) are on the CPU generator, from this batch's own seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mixed = mixing and bool(torch.rand(()) < self.prob)
            if mixed:
                data, soft = self.mix(data, target)
            else:
                soft = F.one_hot(target, self.num_classes).float()
        if self.label_smoothing:
            soft = soft * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        if rows is None:
            return data, soft
        return data, soft, self._mix_rows(rows, data, shape, seed) if mixed else rows

    def _mix_rows(self, rows: torch.Tensor, data: torch.Tensor, shape: torch.Size, seed: int) -> torch.Tensor:
        """``rows`` mixed with the lambda and the pairs (each sample with the one before it) of the batch.

        The same draws are made again on a probe batch (one channel of zeros, the inputs' size, labels
        1, 0, 0, ...): its first soft label is lambda * one_hot(1) + (1 - lambda) * one_hot(0), so its
        column 1 is the lambda that was used (CutMix's, corrected for the box's area).
        """
        if len(rows) < 2:
            return rows  # a sample paired with itself is unchanged
        probe = data.new_zeros((shape[0], 1, *shape[2:]) if len(shape) > 2 else shape)
        probe_labels = torch.zeros(len(rows), dtype=torch.long, device=rows.device)
        probe_labels[0] = 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            torch.rand(())
            _, probe_soft = self.mix(probe, probe_labels)
        lam = probe_soft[0, 1].to(rows.dtype)
        return rows.roll(1, 0) * (1.0 - lam) + rows * lam


def build_mixer(config, rank: int = 0) -> BatchMixer | None:
    """The BatchMixer of ``trainer.mixup`` (None when it is off)."""
    options = config["trainer"]["mixup"]
    if options is None:
        return None
    num_classes = config["arch"].get("args", {}).get("num_classes")
    if not isinstance(num_classes, int):
        raise ConfigError("trainer.mixup", "needs arch.args.num_classes (the width of the soft targets)")
    return BatchMixer(num_classes, seed=config["seed"], rank=rank, **options)
