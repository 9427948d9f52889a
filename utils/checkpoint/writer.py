"""The checkpoint writer: a save costs the training loop a copy of the state, the disk work runs beside it."""
import errno
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path

from utils.checkpoint import files
from utils.checkpoint.snapshot import StateSnapshot
from utils.errors import CheckpointError

logger = logging.getLogger(__name__)


class CheckpointWriter:
    """Writes checkpoints to disk in a background thread, so that training does not wait for the disk.

    With ``background`` (``trainer.async_checkpoint``, the default), ``save`` returns as soon as the
    state is copied into host memory (utils/checkpoint/snapshot.py), so training may change the model
    right away; serializing, the checksum, the write, the fsync and the renames happen in the
    background, one save at a time, in order. Without it, or with ``wait=True`` (when the caller needs
    the file at once), the calling thread does it all. ``wait()`` finishes the pending save and
    re-raises its error, if any: a failed write (a full disk, a file-size limit, an I/O or permission
    error) is a CheckpointError that says what is still safe on disk, and leaves no temporary file.

    Examples:
        >>> writer = CheckpointWriter()
        >>> writer.save(state, run_dir / "last.pth", links=[run_dir / "model_best.pth"])
        >>> writer.wait()   # before reading the files, and before the program exits
    """

    def __init__(self, background: bool = True):
        self.background = background
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer",
                                            initializer=_lower_priority)
        self._pending: Future | None = None
        self._snapshot = StateSnapshot()
        self._written: dict[Path, str] = {}  # file -> what it holds, for the files this writer wrote

    def save(self, state: dict, path: str | Path, links: list[Path] = (), wait: bool = False,
             message: str | None = None) -> None:
        """Save ``state`` to ``path``, hard-link it as each of ``links`` and then log ``message``; with
        ``wait``, return once they are on disk (written by the calling thread: handing them to the
        thread would only cost more)."""
        self.wait()  # the previous save is on disk, and the snapshot's buffers are free again
        what = f"epoch {state.get('epoch')}" + (f", batch {state['batches_done']}" if state.get("batches_done") else "")
        job = (Path(path), list(links), what, message)
        if wait or not self.background:
            self._write(state, *job)
        else:
            state = self._snapshot.copy(state)  # training waits for this copy only
            self._pending = self._executor.submit(self._write, state, *job)

    def _write(self, state: dict, path: Path, links: list[Path], what: str, message: str | None) -> None:
        target = path
        try:
            files.save_checkpoint(state, path)
            self._written[path] = what
            for target in links:
                files.link_checkpoint(path, target)
                self._written[target] = what
        except OSError as error:
            raise CheckpointError(str(target), self._failure(error, target, what)) from None
        if message:
            logger.info(message)

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

    def settle(self) -> bool:
        """Wait for the pending save; whether it failed (``wait()`` then raises its error)."""
        if self._pending is not None:
            futures_wait([self._pending])
        return self.failed()

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


def _lower_priority() -> None:
    """The writer thread yields the CPU to training when the cores are busy (Linux: a thread's nice value)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: the default priority
        pass
