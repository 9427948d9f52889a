"""The model card written beside an exported file: what the model is, how to prepare its input, how it was
verified. ``model_card.json`` is for programs (inference.py reads it), ``model_card.md`` for people.

One card describes one checkpoint; files exported from it into the same folder (ONNX and .pt2, say)
are listed together under ``files``.
"""
import hashlib
import json
import os
from pathlib import Path

from utils.errors import CheckpointError

CARD_NAME = "model_card.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def preprocessing(config: dict, reads: str) -> dict:
    """The evaluation preprocessing of a config written out: how samples are read (``reads``, the
    dataset's own description), the resize on reading, every evaluation transform step, and the
    resize and normalisation values among them."""
    args = config["dataset"].get("args", {})
    steps = args.get("eval_transform") or []
    normalize = next((step.get("args", {}) for step in steps if step.get("type") == "Normalize"), None)
    resize = [{"type": step["type"], **step.get("args", {})} for step in steps
              if step.get("type") in ("Resize", "CenterCrop", "RandomResizedCrop", "Pad")]
    return {
        "dataset": config["dataset"]["type"],
        "reads": reads,
        "image_size": args.get("image_size"),
        "eval_transform": steps,
        "resize": resize,
        "normalize": {"mean": normalize.get("mean"), "std": normalize.get("std")} if normalize else None,
    }


def _plain(value):
    """JSON-ready: tensors and arrays as lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_card(exported: Path, card: dict, entry: dict) -> Path:
    """Write ``model_card.json`` and ``model_card.md`` beside ``exported``; ``entry`` describes the file.

    A card of the same checkpoint already there keeps its other files' entries.

    Examples:
        >>> write_card(Path("deploy/model.onnx"), card, {"format": "onnx", "sha256": "...", "verification": {}})
    """
    path = exported.parent / CARD_NAME
    files = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = {}
        if previous.get("checkpoint", {}).get("sha256") == card["checkpoint"]["sha256"]:
            files = {name: value for name, value in previous.get("files", {}).items()
                     if (exported.parent / name).is_file()}
    card = _plain(card | {"files": files | {exported.name: entry}})
    _write_atomic(path, json.dumps(card, indent=2))
    _write_atomic(path.with_suffix(".md"), card_markdown(card))
    return path


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


def read_card(exported: Path) -> dict:
    """The card of an exported file (the ``model_card.json`` beside it that lists it), or a CheckpointError."""
    path = exported.parent / CARD_NAME
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(str(exported), f"no {CARD_NAME} beside it: export.py writes one with the model, "
                                             "and the preprocessing and config are read from it") from None
    except ValueError as error:
        raise CheckpointError(str(path), f"is not valid JSON: {error}") from None
    if exported.name not in card.get("files", {}):
        raise CheckpointError(str(path), f"does not describe {exported.name} (it lists "
                                         f"{', '.join(card.get('files', {})) or 'no file'}): export it again")
    return card


def card_markdown(card: dict) -> str:
    """The card for people: a short page with the same facts as the JSON."""
    prep, check = card["preprocessing"], card["checkpoint"]
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in card["metrics"].items() if isinstance(v, (int, float)))
    lines = [f"# {card['name']}: {card['arch']}", "",
             f"- task: {card['task']}",
             f"- classes: {', '.join(map(str, card['classes'])) if card['classes'] else 'not named'}",
             f"- input: `{card['input']['name']}`, {card['input']['dtype']}, shape {card['input']['shape']} "
             "(batch first)",
             f"- checkpoint: `{check['path']}` (epoch {check['epoch']}, {check['weights']} weights), "
             f"SHA-256 `{check['sha256']}`",
             f"- metrics of the checkpoint: {metrics or 'none saved'}",
             "", "## Preprocessing", "",
             f"- samples as {prep['dataset']} reads them: {prep['reads']}"]
    if prep["image_size"] is not None:
        lines.append(f"- resized to {prep['image_size']} (bilinear) when read")
    lines += [f"- {step['type']}({', '.join(f'{k}={json.dumps(v)}' for k, v in step.get('args', {}).items())})"
              for step in prep["eval_transform"]]
    if prep["normalize"]:
        lines.append(f"- normalisation: mean {prep['normalize']['mean']}, std {prep['normalize']['std']}")
    lines += ["", "## Files", "", "| file | format | outputs | batch | largest abs. difference | classes agree |",
              "|---|---|---|---|---|---|"]
    for name, entry in card["files"].items():
        verified = entry["verification"]
        agreement = "-" if verified["class_agreement"] is None else f"{verified['class_agreement']:.1%}"
        lines.append(f"| `{name}` | {entry['format']} ({verified['exporter']}) | {', '.join(entry['outputs'])} | "
                     f"{entry['batch']} | {verified['max_abs_diff']:.3g} (atol {verified['atol']:g}, "
                     f"{verified['samples']} samples) | {agreement} |")
    lines += ["", "The config the model was trained with is in model_card.json (`config`).", ""]
    return "\n".join(lines)


def exported_checkpoint(exported: Path) -> dict:
    """What inference.py needs of a checkpoint, read from the card of an exported ONNX file: the config
    (its preprocessing and task), the class names and the loss arguments the run trained with.

    Examples:
        >>> exported_checkpoint(Path("deploy/model.onnx"))["classes"]
        ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']
    """
    import torch

    card = read_card(exported)
    entry = card["files"][exported.name]
    if entry.get("postprocess"):
        raise CheckpointError(str(exported), "was exported with --postprocess (it outputs probabilities): "
                                             "inference.py runs models that output what the PyTorch model does")
    if entry.get("sha256") != sha256_of(exported):
        raise CheckpointError(str(exported), f"is not the file {CARD_NAME} describes (its SHA-256 differs): "
                                             "export it again")
    loss_args = {key: torch.tensor(value) if isinstance(value, list) else value
                 for key, value in card.get("loss_args", {}).items()}
    return {"config": card["config"], "classes": card.get("classes"), "arch": card["arch"], "loss_args": loss_args}
