"""Checkpoint files: atomic saves, a checksum over every byte, safe loading.

A checkpoint is an ordinary ``torch.save`` file (a zip archive) whose archive comment holds the
SHA-256 of the bytes before it. ``torch.load(path, weights_only=True)`` reads it as usual; this module
also verifies the checksum, so a truncated or altered file is named instead of silently loaded.
"""
import errno
import hashlib
import io
import logging
import os
import pickle
import re
import shutil
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from utils.checkpoint.unreadable import describe_unreadable
from utils.errors import CheckpointError

FORMAT_VERSION = 1
_CHECKSUM_TAG = b"sha256:"
_CHECKSUM_LENGTH = len(_CHECKSUM_TAG) + 64
_ZIP_END_SIGNATURE = b"PK\x05\x06"  # the end-of-central-directory record, 22 bytes at the end
TEMP_SUFFIX = ".tmp"

logger = logging.getLogger(__name__)


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A crash or SIGKILL at any moment leaves either the previous file or the new one, never a mix.
    (The folder itself is not fsynced: after a power loss the rename may be undone, which leaves
    the previous, complete checkpoint.)
    """
    write_checkpoint_bytes(serialize(state), path)


def serialize(state: dict) -> bytearray:
    """The bytes of ``torch.save(state)``; ``write_checkpoint_bytes`` adds the checksum."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return bytearray(buffer.getbuffer())


def write_checkpoint_bytes(data: bytearray, path: str | Path) -> None:
    """Add the checksum to serialized bytes and write them atomically (see ``save_checkpoint``)."""
    if data[-22:-18] != _ZIP_END_SIGNATURE or data[-2:] != b"\0\0":
        raise RuntimeError("torch.save wrote an archive with a comment; cannot add the checksum")
    data[-2:] = _CHECKSUM_LENGTH.to_bytes(2, "little")  # declare the comment that follows
    data += _CHECKSUM_TAG + hashlib.sha256(data).hexdigest().encode()
    path = Path(path)
    temp = path.with_name(path.name + TEMP_SUFFIX)
    try:
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)  # a full disk must not stay full of a half-written file
        raise


def link_checkpoint(source: str | Path, target: str | Path) -> None:
    """Make ``target`` hold the same bytes as ``source``, atomically, as a hard link where possible.

    The link costs no disk space; ``source`` being replaced later does not change ``target``.
    """
    source, target = Path(source), Path(target)
    temp = target.with_name(target.name + TEMP_SUFFIX)
    temp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temp)
        except OSError:  # a file system without hard links
            shutil.copyfile(source, temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


class CheckpointWriter:
    """Writes checkpoints to disk in a background thread, so that training does not wait for the disk.

    ``save`` serializes the state before it returns (so training may change the model right away);
    the checksum, the write, the fsync and the renames happen in the background, one save at a time,
    in order (or in the calling thread with ``wait=True``, when the caller needs the file at once).
    ``wait()`` finishes the pending save and re-raises its error, if any: a failed write (a full
    disk, a file-size limit, an I/O or permission error) is a CheckpointError that says what is
    still safe on disk, and leaves no temporary file behind.

    Examples:
        >>> writer = CheckpointWriter()
        >>> writer.save(state, run_dir / "last.pth", links=[run_dir / "model_best.pth"])
        >>> writer.wait()   # before reading the files, and before the program exits
    """

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending: Future | None = None
        self._written: dict[Path, str] = {}  # file -> what it holds, for the files this writer wrote

    def save(self, state: dict, path: str | Path, links: list[Path] = (), wait: bool = False) -> None:
        """Save ``state`` to ``path`` and hard-link it as each of ``links``; with ``wait``, return once
        they are on disk (written by the calling thread: handing them to the thread would only cost more)."""
        data = serialize(state)
        self.wait()
        what = f"epoch {state.get('epoch')}" + (f", batch {state['batches_done']}" if state.get("batches_done") else "")
        if wait:
            self._write(data, Path(path), list(links), what)
        else:
            self._pending = self._executor.submit(self._write, data, Path(path), list(links), what)

    def _write(self, data: bytearray, path: Path, links: list[Path], what: str) -> None:
        target = path
        try:
            write_checkpoint_bytes(data, path)
            self._written[path] = what
            for target in links:
                link_checkpoint(path, target)
                self._written[target] = what
        except OSError as error:
            raise CheckpointError(str(target), self._failure(error, target, what)) from None

    def _failure(self, error: OSError, target: Path, what: str) -> str:
        """Why the save of ``what`` to ``target`` failed, and what is still safe on disk."""
        reason = f"{error.strerror or error} ({errno.errorcode.get(error.errno, 'error')})"
        safe = [f"{path.name} ({held})" for path, held in self._written.items() if path.is_file()]
        if target.is_file() and target not in self._written:
            safe.insert(0, f"the previous {target.name}")
        kept = f"still safe on disk: {', '.join(safe)}" if safe else "no checkpoint of this run is on disk"
        return f"cannot write the checkpoint of {what}: {reason}; {kept}. Free some space (or fix the folder), " \
               "then resume"

    def failed(self) -> bool:
        """Whether a save that has finished in the background failed (``wait()`` raises its error).

        It does not wait: training checks it at its regular host syncs, so a failed write stops the
        run within a few batches instead of at the next save.
        """
        return self._pending is not None and self._pending.done() and self._pending.exception() is not None

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


def clean_temp_files(folder: str | Path) -> None:
    """Remove the temporary files a crash during a save left behind."""
    for temp in Path(folder).glob(f"*{TEMP_SUFFIX}"):
        logger.warning("removing %s, left by an interrupted save", temp)
        temp.unlink()


def read_verified(path: str | Path) -> bytes:
    """The bytes of a checkpoint file whose checksum matches; a CheckpointError naming it otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(str(path), "no such checkpoint file")
    data = path.read_bytes()
    tag_at = len(data) - _CHECKSUM_LENGTH
    if data[tag_at : tag_at + len(_CHECKSUM_TAG)] != _CHECKSUM_TAG:
        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise CheckpointError(str(path), f"not a checkpoint: it {describe_unreadable(data)}")
        raise CheckpointError(str(path), "damaged or not written by this template (no checksum)")
    expected = data[tag_at + len(_CHECKSUM_TAG) :].decode("ascii", "replace")
    if hashlib.sha256(data[:tag_at]).hexdigest() != expected:
        raise CheckpointError(str(path), "damaged: its checksum does not match its contents")
    return data


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and verify a checkpoint without running any code stored in it.

    Raises a CheckpointError, which names the file, when it is missing, damaged, not a checkpoint,
    or holds a pickle with code in it (``weights_only=True`` refuses those).

    Examples:
        >>> checkpoint = load_checkpoint("saved/Digits_ResNet/20261127_101500/model_best.pth")
        >>> model.load_state_dict(checkpoint["state_dict"])
    """
    data = read_verified(path)
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(str(path), f"refused to load: it holds objects other than tensors and plain "
                                         f"data{what}, which could run code; load only files you trust") from None
    except Exception as error:
        raise CheckpointError(str(path), f"cannot be read: it {describe_unreadable(data)} "
                                         f"({type(error).__name__})") from error
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise CheckpointError(str(path), "not a training checkpoint of this template")
    if checkpoint["format_version"] > FORMAT_VERSION:
        raise CheckpointError(str(path), f"format {checkpoint['format_version']} is newer than this code")
    return checkpoint


def resume_candidates(run_dir: str | Path) -> list[Path]:
    """The checkpoints of a run directory, newest first: last.pth, then the others by time."""
    run_dir = Path(run_dir)
    others = [*run_dir.glob("checkpoint-epoch*.pth"), run_dir / "model_best.pth"]
    others = sorted((p for p in others if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)
    last = run_dir / "last.pth"
    return ([last] if last.is_file() else []) + others


def fold_dirs(run_dir: str | Path) -> list[Path]:
    """The ``fold_{k}`` run directories of a k-fold run, in fold order (empty for other runs)."""
    folds = [p for p in Path(run_dir).glob("fold_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(folds, key=lambda p: int(p.name[5:]))


def read_resume_checkpoint(target: str | Path, map_location="cpu") -> tuple[Path, dict]:
    """(path, checkpoint) to continue from: a checkpoint file, or the newest one of a run directory
    that verifies (warning about each one skipped). Every file is read and verified once.

    Examples:
        >>> path, checkpoint = read_resume_checkpoint("saved/Digits_ResNet/20261127_101500")
        >>> trainer.resume(checkpoint, path)
    """
    target = Path(target)
    if target.is_file():
        return target, load_checkpoint(target, map_location)
    candidates = resume_candidates(target)
    if not candidates:
        raise CheckpointError(str(target), "holds no checkpoint (last.pth, checkpoint-epoch*.pth)")
    for candidate in candidates:
        try:
            return candidate, load_checkpoint(candidate, map_location)
        except CheckpointError as error:
            logger.warning("skipping %s", error)
    raise CheckpointError(str(target), "every checkpoint in it is damaged")


def best_or_last(run_dir: str | Path) -> Path:
    """The checkpoint that stands for a finished run: model_best.pth, else last.pth."""
    best = Path(run_dir) / "model_best.pth"
    return best if best.is_file() else Path(run_dir) / "last.pth"


def load_model_weights(model: torch.nn.Module, state_dict: dict, path: str | Path) -> None:
    """Load a checkpoint's weights into ``model`` (whatever wrapper prefixes they were saved with);
    a CheckpointError naming the file when they do not fit.
    """
    try:
        model.load_state_dict(strip_module_prefix(state_dict, model.state_dict()))
    except RuntimeError as error:
        detail = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise CheckpointError(str(path), f"does not fit the model built from the config: {detail}") from None


def strip_module_prefix(state_dict: dict, model_keys=None) -> dict:
    """State dict keys without the ``module.`` (DataParallel, DDP) and ``_orig_mod.`` (compile) prefixes.

    Given the keys of the model it is for, a state dict that already fits is left as it is: a model
    may have a submodule of its own called ``module``.
    """
    if model_keys is not None and set(state_dict) == set(model_keys):
        return state_dict
    prefixes = ("module.", "_orig_mod.")
    clean = {}
    for key, value in state_dict.items():
        while key.startswith(prefixes):
            key = key.split(".", 1)[1]
        clean[key] = value
    return clean
