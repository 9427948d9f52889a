"""DataLoader worker processes: stopped before the program exits, whatever stopped it."""
import atexit
import weakref

loaders_with_workers = weakref.WeakSet()


@atexit.register
def _stop_workers() -> None:
    """Stop the worker processes of every loader before the program exits.

    Workers ignore SIGTERM (see utils.seeding.worker_init_fn), so multiprocessing's own exit
    handler, which runs after this one, could not stop them.
    """
    for loader in list(loaders_with_workers):
        iterator = getattr(loader, "_iterator", None)  # persistent workers live in the loader's iterator
        if iterator is not None:
            iterator._shutdown_workers()
