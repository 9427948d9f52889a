"""The modules that are exported, and an ONNX model that stands in for a PyTorch one at inference."""
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

RAW_OUTPUT = "output"


class ExportedOutputs(nn.Module):
    """The model as exported: a tuple of tensors, one per name of ``output_names``.

    Without a task, the model's own output (the logits) is the one output, named "output". With a
    task, its ``output_probabilities`` is folded in: softmax for classification, sigmoid for
    multi-label, one named output per head for multi-head.

    Examples:
        >>> wrapped = ExportedOutputs(model, task)            # export.py --postprocess
        >>> wrapped.output_names                               # ['probabilities']
    """

    def __init__(self, model: nn.Module, task=None, example: torch.Tensor | None = None):
        super().__init__()
        self.model, self.task = model, task
        self.output_names = [RAW_OUTPUT]
        if task is not None:
            with torch.no_grad():
                self.output_names = list(task.output_probabilities(model(example[:2])))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(x)
        if self.task is None:
            return (output,)
        return tuple(self.task.output_probabilities(output).values())


class OnnxModel:
    """An exported ONNX model run with onnxruntime, called like the PyTorch model it came from.

    It takes a batch tensor and returns the first output as a torch tensor on the input's device, so
    the prediction code (TTA, ensembles, scoring) runs unchanged.

    Examples:
        >>> model = OnnxModel("saved/Digits_ResNet/20261127_101500/model.onnx")
        >>> logits = model(torch.rand(4, 1, 8, 8))
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def run(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every output of the model for the batch ``x``, as CPU tensors."""
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return [torch.from_numpy(np.asarray(out)) for out in self.session.run(None, {self.input_name: array})]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0].to(x.device)

    def eval(self) -> "OnnxModel":
        return self

    def to(self, *args, **kwargs) -> "OnnxModel":
        return self


def run_outputs(module, x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of an exported module (or the wrapper itself) for ``x`` as a list of float tensors."""
    if isinstance(module, OnnxModel):
        return module.run(x)
    with torch.no_grad():
        outputs = module(x)
    outputs = outputs if isinstance(outputs, Sequence) else [outputs]
    return [output.detach().float().cpu() for output in outputs]
