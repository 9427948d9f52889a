"""The teacher terms of knowledge distillation (Hinton, Vinyals and Dean, 2015), per sample.

A teacher is known by its probabilities (a predictions CSV), not its logits: at temperature T the
teacher's distribution is ``softmax(log p / T)``, which equals ``softmax(z / T)`` of the logits z it
came from. Each term is scaled by T², so that its gradients keep their size as T changes.
"""
import torch
import torch.nn.functional as F


def softmax_kl(output: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per sample, ``T² · KL(teacher_T ‖ student_T)`` of single-label logits ``output`` against the
    teacher's class probabilities ``teacher`` (both (batch, classes)).

    Examples:
        >>> softmax_kl(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]), 4.0)
        tensor([0.])
    """
    teacher_log = F.log_softmax(teacher.float().clamp_min(1e-12).log() / temperature, dim=1)
    student_log = F.log_softmax(output.float() / temperature, dim=1)
    return (teacher_log.exp() * (teacher_log - student_log)).sum(dim=1) * temperature ** 2


def binary_kl(output: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per sample, ``T²`` times the mean over labels of the binary KL divergence of each label's
    teacher probability from the student's, both at temperature T (multi-label logits ``output``).

    Examples:
        >>> binary_kl(torch.zeros(1, 3), torch.full((1, 3), 0.5), 2.0)
        tensor([0.])
    """
    p = teacher.float().clamp(1e-7, 1 - 1e-7)
    p_t = torch.sigmoid((p.log() - (-p).log1p()) / temperature)
    z = output.float() / temperature
    kl = p_t * (p_t.log() - F.logsigmoid(z)) + (1 - p_t) * ((-p_t).log1p() - F.logsigmoid(-z))
    return kl.mean(dim=1) * temperature ** 2


def squared_error(output: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per sample, the mean squared difference of regression outputs and the teacher's predictions."""
    return (output.float().reshape(teacher.shape) - teacher.float()).pow(2).mean(dim=1)
