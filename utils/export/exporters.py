"""Writing a model to an ONNX, torch.export (.pt2) or TorchScript file.

Each exporter takes the module to export (``ExportedOutputs``), an example batch (real samples: a
trace follows the branches they take) and whether the batch dimension stays dynamic. A failure
becomes one ConfigError that names the operator the exporter could not handle, where it says which.
"""
import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from utils.errors import ConfigError

logger = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "exported": ".pt2", "torchscript": ".pt"}
INPUT_NAME = "input"
DYNAMO_MIN_OPSET = 18
# "aten::fft_rfft2", "aten.linalg_eig.default", "torchvision::nms": the operator an exporter names.
_UNSUPPORTED = re.compile(r"unsupported|not supported|not implemented|no (?:onnx )?(?:function|decomposition|symbolic)"
                          r"|missing onnx function|cannot be (?:exported|converted)", re.IGNORECASE)
_OPERATOR = re.compile(r"\b((?:aten|prim|torchvision|quantized)(?:::|\.)[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)")


def failed_operator(error: BaseException) -> str | None:
    """The operator an export error says is unsupported (searched through its chain of causes), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        found = _OPERATOR.search(str(error)) if _UNSUPPORTED.search(str(error)) else None
        if found:
            return found.group(1)
        error = error.__cause__ or error.__context__
    return None


def _brief(error: BaseException) -> str:
    """An exporter's message on one line, without its terminal colours, cut short."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split())
    return text[:200] or type(error).__name__


def export_error(fmt: str, module: torch.nn.Module, error: BaseException) -> ConfigError:
    """One line for a model that cannot be exported: the operator when the exporter names it."""
    operator = failed_operator(error)
    what = f"operator {operator} cannot be exported" if operator else f"the exporter failed: {_brief(error)}"
    model_name = type(getattr(module, "model", module)).__name__
    return ConfigError(f"arch ({model_name})", f"cannot be exported to {fmt}: {what}")


@contextlib.contextmanager
def _quiet_exporter_logs():
    """torch.export and the ONNX optimiser log every guard they add and every pass they run, and warn with
    whole graphs: none of it reaches the console; a failure is reported in one line, and the verification
    that follows says whether the graph computes what the model does."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    printed = io.StringIO()  # torch.export prints the partial graph of a failure to sys.stderr
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
        if printed.getvalue().strip():
            logger.debug("the exporter printed:\n%s", printed.getvalue())


@contextlib.contextmanager
def _native_output_to_debug_log():
    """The TorchScript-based ONNX exporter prints its whole graph from C++ when it fails: that goes to
    the debug log, so that the console shows the one-line error only."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            capture.seek(0)
            text = capture.read().decode(errors="replace").strip()
            if text:
                logger.debug("the ONNX exporter printed:\n%s", text)


@contextlib.contextmanager
def _quiet_tracer():
    """Tracing warns about every Python branch and deprecation; the verification that follows tells
    whether the traced graph computes what the model does, in one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, and still what many load
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _batch_dim(dynamic_batch: bool):
    return ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool,
                opset: int | None) -> str:
    """Write ``path`` with torch.onnx's dynamo exporter, or where that fails, its TorchScript-based one.

    Returns the name of the exporter that wrote the file.
    """
    names = module.output_names
    if opset is not None and opset < DYNAMO_MIN_OPSET:
        logger.info("opset %d is older than the dynamo exporter writes (%d and newer): using the TorchScript-based "
                    "exporter", opset, DYNAMO_MIN_OPSET)
        return _export_onnx_torchscript(module, example, path, dynamic_batch, opset)
    try:
        with _quiet_exporter_logs():
            torch.onnx.export(module, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                              output_names=names, dynamic_shapes=_batch_dim(dynamic_batch), opset_version=opset,
                              external_data=False, verbose=False, report=False)
        return "torch.onnx dynamo"
    except Exception as error:  # noqa: BLE001 - any failure of the new exporter gets the older one's try
        operator = failed_operator(error)
        logger.warning("the dynamo ONNX exporter failed (%s); trying the TorchScript-based exporter",
                       f"operator {operator}" if operator else _brief(error))
        path.unlink(missing_ok=True)
    return _export_onnx_torchscript(module, example, path, dynamic_batch, opset)


def _export_onnx_torchscript(module: torch.nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool,
                             opset: int | None) -> str:
    names = module.output_names
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *names]} if dynamic_batch else None
    try:
        with _quiet_tracer(), _native_output_to_debug_log():
            torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                              output_names=names, dynamic_axes=axes, opset_version=opset, verbose=False)
    except Exception as error:
        raise export_error("ONNX", module, error) from error
    return "torch.onnx TorchScript-based"


def export_program(module: torch.nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool) -> str:
    """Write ``path`` with torch.export.export and torch.export.save (a .pt2 program)."""
    try:
        with _quiet_exporter_logs():
            program = torch.export.export(module, (example,), dynamic_shapes=_batch_dim(dynamic_batch))
            torch.export.save(program, str(path))
    except Exception as error:
        raise export_error("torch.export", module, error) from error
    return "torch.export"


def export_torchscript(module: torch.nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ``path`` with torch.jit.trace (the branches the example takes) and torch.jit.save."""
    try:
        with _quiet_tracer():
            traced = torch.jit.trace(module, (example,), check_trace=False)
            torch.jit.save(traced, str(path))
    except Exception as error:
        raise export_error("TorchScript", module, error) from error
    return "torch.jit.trace"


def export_file(module: torch.nn.Module, example: torch.Tensor, path: Path, fmt: str, dynamic_batch: bool,
                opset: int | None = None) -> str:
    """Write the module to ``path`` in ``fmt`` (a key of FORMATS); returns the exporter used."""
    if fmt == "onnx":
        return export_onnx(module, example, path, dynamic_batch, opset)
    if fmt == "exported":
        return export_program(module, example, path, dynamic_batch)
    return export_torchscript(module, example, path)


def onnx_opset(path: Path) -> int | None:
    """The default-domain opset an ONNX file was written with."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
