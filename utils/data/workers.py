"""DataLoader worker processes: stopped when a run ends and before the program exits, whatever stopped it."""
import atexit
import multiprocessing
import multiprocessing.util  # noqa: F401 (its exit handler is registered first, so it runs after ours)
import signal
import weakref

loaders_with_workers = weakref.WeakSet()


def stop_workers(*loaders) -> None:
    """Stop the persistent worker processes of ``loaders`` now; a later epoch over one starts new ones.

    A run (a trial of tune.py, a fold of kfold_train.py) calls it when it ends, so that its workers do
    not outlive it. Left to the garbage collector, a loader's workers are stopped wherever the
    collection happens to run, and a stop that runs inside an import can lose its message to them:
    they then wait forever, and so does the program's exit.

    Examples:
        >>> stop_workers(trainer.data_loader, trainer.valid_data_loader)
    """
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)  # persistent workers live in the loader's iterator
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            loader._iterator = None


@atexit.register
def _stop_workers() -> None:
    """Stop the worker processes of every loader before the program exits.

    Workers ignore SIGTERM (see utils.seeding.worker_init_fn), so multiprocessing's own exit
    handler, which runs after this one and stops daemonic children with SIGTERM, would wait for
    them forever. Those still running once their loaders are stopped (a loader collected without
    stopping them) are killed: DataLoader workers are the program's only daemonic processes.
    """
    stop_workers(*list(loaders_with_workers))
    # torch's SIGCHLD handler raises when a worker of a live iterator dies: here, in the middle of this
    # loop, which would leave the next workers running.
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    workers = [child for child in multiprocessing.active_children() if child.daemon]
    for child in workers:
        child.kill()
    for child in workers:
        child.join(timeout=5)
