"""Proof that an exported file computes what the PyTorch model computes, and the atomic write around it.

The file is written under a temporary name, loaded back the way a deployment loads it (onnxruntime,
``torch.export.load``, ``torch.jit.load``), run on real samples at two batch sizes and compared with
the PyTorch model; only a file within the tolerance is renamed to its name, any other is removed.
"""
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from utils.errors import CheckpointError
from utils.export.exporters import export_file, onnx_opset
from utils.export.wrappers import OnnxModel, run_outputs

logger = logging.getLogger(__name__)


def load_exported(path: Path, fmt: str) -> Callable[[torch.Tensor], object]:
    """The exported file loaded as a deployment loads it: a callable on a batch tensor."""
    if fmt == "onnx":
        return OnnxModel(path)
    if fmt == "exported":
        return torch.export.load(str(path)).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation
        return torch.jit.load(str(path), map_location="cpu")


def _batches(samples: torch.Tensor, size: int, fixed: bool) -> list[tuple[torch.Tensor, int]]:
    """(batch, number of real rows): a fixed-size graph gets its last batch filled up with repeats."""
    batches = []
    for start in range(0, len(samples), size):
        chunk = samples[start:start + size]
        rows = len(chunk)
        if fixed and rows < size:
            chunk = torch.cat([chunk, samples[:1].expand(size - rows, *samples.shape[1:])])
        batches.append((chunk, rows))
    return batches


def compare(reference, exported, samples: torch.Tensor, batch_sizes: list[int], fixed: bool) -> dict:
    """Run both models on ``samples`` at each batch size: the largest absolute difference over every
    output, and the share of samples whose predicted class (the argmax of each output of more than
    one column) is the same."""
    max_diff, agree, compared, has_classes = 0.0, 0, 0, False
    for size in batch_sizes:
        for batch, rows in _batches(samples, size, fixed):
            expected, actual = run_outputs(reference, batch), run_outputs(exported, batch)
            if len(actual) != len(expected) or any(a.shape != e.shape for a, e in zip(actual, expected)):
                shapes = [tuple(a.shape) for a in actual], [tuple(e.shape) for e in expected]
                return {"max_abs_diff": float("inf"), "class_agreement": 0.0, "problem": f"output shapes {shapes[0]} "
                                                                                         f"instead of {shapes[1]}"}
            same = torch.ones(rows, dtype=torch.bool)
            for e, a in zip(expected, actual):
                e, a = e[:rows].float(), a[:rows].float()
                max_diff = max(max_diff, float((e - a).abs().max()) if e.numel() else 0.0)
                if torch.isnan(e).ne(torch.isnan(a)).any():
                    max_diff = float("inf")
                if e.dim() == 2 and e.shape[1] > 1:
                    same &= e.argmax(dim=1) == a.argmax(dim=1)
                    has_classes = True
            agree, compared = agree + int(same.sum()), compared + rows
    # One value per sample (regression) has no class to compare.
    return {"max_abs_diff": max_diff, "class_agreement": agree / max(compared, 1) if has_classes else None}


def _agreement(report: dict, separator: str) -> str:
    agreement = report["class_agreement"]
    return "" if agreement is None else f"{separator}predicted classes agree on {agreement:.1%}"


def export_and_verify(module, samples: torch.Tensor, path: Path, fmt: str, batch: int | None, atol: float,
                      opset: int | None = None, where: str = "export") -> dict:
    """Export ``module`` to ``path`` and verify it on ``samples``; returns the verification report.

    ``batch`` None keeps the batch dimension dynamic and verifies at batch sizes 1 and len(samples);
    a number fixes it (the samples are then run in batches of that size). Above ``atol`` nothing is
    left at ``path`` and a CheckpointError (one line, naming ``where``) says by how much it differs.

    Examples:
        >>> report = export_and_verify(ExportedOutputs(model), samples, Path("model.onnx"), "onnx", None, 1e-4)
        >>> report["max_abs_diff"], report["class_agreement"]
        (2.4e-07, 1.0)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.partial{path.suffix}")
    example = samples if batch is None else _batches(samples, batch, fixed=True)[0][0]
    if batch is None and len(example) < 2:
        example = example.expand(2, *example.shape[1:])  # a batch of 1 would be fixed by the exporter
    try:
        exporter = export_file(module, example.contiguous(), temp, fmt, batch is None, opset)
        batch_sizes = [1, len(samples)] if batch is None else [batch]
        report = compare(module, load_exported(temp, fmt), samples, batch_sizes, fixed=batch is not None)
        report |= {"samples": len(samples), "batch_sizes": batch_sizes, "atol": atol, "exporter": exporter}
        if not report["max_abs_diff"] <= atol:
            problem = report.get("problem") or (f"largest absolute difference {report['max_abs_diff']:.3g} > "
                                                f"--atol {atol:g}")
            raise CheckpointError(where, f"the exported {fmt} model does not compute what the PyTorch model does on "
                                         f"{len(samples)} samples ({problem}{_agreement(report, '; ')}); nothing "
                                         "was written")
        if fmt == "onnx":
            report["opset"] = onnx_opset(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    logger.info("verified %s (%s): %d samples at batch sizes %s, largest absolute difference %.3g%s", path, exporter,
                len(samples), ", ".join(map(str, report["batch_sizes"])), report["max_abs_diff"],
                _agreement(report, ", "))
    return report
