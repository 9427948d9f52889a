"""Export a trained model to ONNX, torch.export (.pt2) or TorchScript, verified against PyTorch, with a model card.

    python export.py --resume saved/Digits_ResNet/20261127_101500/model_best.pth
    python export.py --resume saved/Digits_ResNet/20261127_101500 --format exported --out deploy/model.pt2
    python export.py --resume model_best.pth --postprocess --batch 8 --opset 18

The model is the checkpoint's (its EMA weights for a run with trainer.ema, unless --no-ema), built from
the config stored in it. Real samples of the run's validation data (or --data files) go through the
PyTorch model and the exported file at two batch sizes; the file is kept only when every output is
within --atol. model_card.json and model_card.md are written beside it.
"""
import inspect
import logging
from pathlib import Path

import torch

from config_parser import ConfigParser
from inference import load_model, test_loader
from logger.logger import setup_logging
from utils.checkpoint.files import best_or_last, load_checkpoint
from utils.cli import ArgumentParser, blame, run_cli
from utils.config.components import build_transform, lookup_type, section_module
from utils.config.overrides import parse_overrides
from utils.errors import CheckpointError, ConfigError
from utils.export.card import preprocessing, sha256_of, write_card
from utils.export.exporters import FORMATS, INPUT_NAME
from utils.export.samples import file_samples, loader_samples
from utils.export.verify import export_and_verify
from utils.export.wrappers import ExportedOutputs

logger = logging.getLogger("export")


def verification_samples(config: ConfigParser, data: list[str] | None, count: int) -> torch.Tensor:
    """``count`` inputs prepared for evaluation: the --data files, else the run's validation data (its
    test data when it has no validation split)."""
    if data:
        args = config["dataset"].get("args", {})
        steps = args.get("eval_transform")
        transform = build_transform(steps, "dataset.args.eval_transform") if steps else None
        return file_samples(data, args.get("image_size"), transform)[:count]
    try:
        loader = test_loader(config, "valid")
    except ConfigError:  # no validation split: the test data
        loader = test_loader(config, "test")
    return loader_samples(loader, count)


def model_card(config: ConfigParser, checkpoint: dict, path: Path, samples: torch.Tensor, use_ema: bool) -> dict:
    """What the card says about the model, whatever file it was exported to."""
    dataset_class = lookup_type(section_module("dataset"), config["dataset"]["type"], "dataset.type")
    reads = (inspect.getdoc(dataset_class) or dataset_class.__name__).splitlines()[0]
    task = config["task"]
    has_ema = use_ema and bool(checkpoint.get("ema"))
    return {
        "name": config["name"],
        "arch": config["arch"]["type"],
        "task": task if isinstance(task, str) else task["type"],
        "classes": checkpoint.get("classes"),
        "input": {"name": INPUT_NAME, "dtype": str(samples.dtype).removeprefix("torch."),
                  "shape": ["batch", *samples.shape[1:]]},
        "preprocessing": preprocessing(config.config, reads),
        "checkpoint": {"path": str(path), "sha256": sha256_of(path), "epoch": checkpoint.get("epoch"),
                       "weights": "EMA" if has_ema else "model"},
        "metrics": checkpoint.get("metrics") or {},
        "monitor": config["trainer"]["monitor"],
        "loss_args": checkpoint.get("loss_args") or {},
        "config": config.config,
    }


def command_line() -> ArgumentParser:
    parser = ArgumentParser(description="Export a trained model, verified against PyTorch, with a model card.")
    parser.add_argument("-r", "--resume", required=True, metavar="CKPT", help="a checkpoint or a run directory")
    parser.add_argument("--format", choices=list(FORMATS), default="onnx",
                        help="onnx (default), exported (torch.export .pt2) or torchscript")
    parser.add_argument("-o", "--out", help="the file to write (default: model.onnx / .pt2 / .pt beside the "
                                            "checkpoint)")
    parser.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    parser.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
    parser.add_argument("--postprocess", action="store_true",
                        help="fold the task's output transform in: probabilities instead of logits")
    parser.add_argument("--no-ema", action="store_true", help="export the model's own weights, not the EMA's")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest absolute difference to PyTorch allowed (default 1e-4)")
    parser.add_argument("--data", nargs="+", metavar="FILE",
                        help="verify on these files (.npy, .pt or images) instead of the validation data")
    parser.add_argument("--samples", type=int, default=32, help="samples to verify on (default 32)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE", help="change a config value")
    return parser


def check_opset(opset: int | None) -> None:
    """An opset the installed onnx knows, and one the exporters write (the TorchScript-based one from 7)."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not 7 <= opset <= newest:
        raise ConfigError("--opset", f"must lie in [7, {newest}] (the installed onnx's newest), got {opset}")


def parse_batch(value: str) -> int | None:
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError("--batch", f"must be 'dynamic' or a positive batch size, got {value!r}")
    return int(value)


def main(argv: list[str] | None = None) -> None:
    args = command_line().parse_intermixed_args(argv)
    batch = parse_batch(args.batch)
    if args.format == "onnx":
        check_opset(args.opset)
    if args.samples < 1 or not args.atol >= 0:
        raise ConfigError("--samples" if args.samples < 1 else "--atol", "must be positive")
    target = Path(args.resume)
    path = best_or_last(target) if target.is_dir() else target
    if not path.is_file():
        what = ("holds no model_best.pth or last.pth (of a k-fold run, export one fold's: fold_0/ ...)"
                if target.is_dir() else "no such checkpoint file or run directory")
        raise CheckpointError(str(target), what)
    checkpoint = load_checkpoint(path)
    config = ConfigParser(checkpoint["config"], modification=parse_overrides(args.overrides))
    setup_logging(None, config["trainer"]["verbosity"])
    out = Path(args.out) if args.out else path.parent / f"model{FORMATS[args.format]}"
    if out.suffix in FORMATS.values() and out.suffix != FORMATS[args.format]:
        raise ConfigError("--out", f"{out.name} names a file of another format: --format {args.format} writes "
                                   f"{FORMATS[args.format]} files")

    torch.manual_seed(0)  # the exporters' own random inputs, if any, are the same every time
    model = load_model(config, checkpoint, path, torch.device("cpu"), own_arch=True, use_ema=not args.no_ema)
    model = model.to(memory_format=torch.contiguous_format).eval()
    samples = verification_samples(config, args.data, args.samples)
    with torch.no_grad(), blame("--data" if args.data else "dataset", "the model cannot take these samples"):
        model(samples[:2])
    module = ExportedOutputs(model, config.init_obj("task") if args.postprocess else None, samples).eval()
    logger.info("exporting %s (%s weights of %s) to %s", config["arch"]["type"],
                "EMA" if checkpoint.get("ema") and not args.no_ema else "the model's", path, out)
    report = export_and_verify(module, samples, out, args.format, batch, args.atol, args.opset, where=str(path))
    entry = {"format": args.format, "sha256": sha256_of(out), "outputs": module.output_names,
             "postprocess": args.postprocess, "batch": "dynamic" if batch is None else batch, "verification": report}
    card = write_card(out, model_card(config, checkpoint, path, samples, not args.no_ema), entry)
    logger.info("wrote %s and %s", out, card)


if __name__ == "__main__":
    run_cli(main)
