"""How long an epoch takes, and how much of it the loop spent waiting for the next batch.

The wait is measured on the host around the loader's ``next()``: no device sync is added. On a GPU,
kernels run ahead of the host, so the host waits for the loader only when the loader is slower than
the GPU: that wait is what an input-bound run loses.
"""
import logging
import time
from collections.abc import Iterable, Iterator

logger = logging.getLogger(__name__)

# Above this fraction of an epoch spent waiting for data, the run is told (once) what to try.
INPUT_BOUND = 0.2


class EpochClock:
    """The wall time of an epoch and the part of it spent waiting for batches.

    Examples:
        >>> clock = EpochClock()
        >>> clock.start()
        >>> for data, target in clock.timed(loader):
        ...     step(data, target)
        >>> clock.stop()
        {'epoch_time': 12.5, 'data_wait': 0.04}
    """

    def __init__(self):
        self.started = time.perf_counter()
        self.waited = 0.0
        self.warned = False

    def start(self, elapsed: float = 0.0, waited: float = 0.0) -> None:
        """Start an epoch; a resumed half-done epoch passes the time and the wait it had already taken."""
        self.started, self.waited = time.perf_counter() - elapsed, waited

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def timed(self, batches: Iterable) -> Iterator:
        """Yield the batches of ``batches``, adding the time each ``next()`` took to the wait."""
        started = time.perf_counter()
        iterator = iter(batches)  # starting workers is waiting too
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                self.waited += time.perf_counter() - started
                return
            self.waited += time.perf_counter() - started
            yield batch
            started = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """The epoch's ``epoch_time`` (seconds) and ``data_wait`` (the fraction of it spent waiting);
        warns once per run when the wait passes a fifth of the epoch."""
        epoch_time = self.elapsed()
        data_wait = min(self.waited / epoch_time, 1.0) if epoch_time > 0 else 0.0
        if data_wait > INPUT_BOUND and not self.warned:
            self.warned = True
            logger.warning("the loop waited for data %.0f%% of the epoch: the input pipeline is the limit. Try "
                           "more data_loader.args.num_workers, pin_memory and persistent_workers (with workers), "
                           "or data_loader.args.on_device for a data set that fits in device memory",
                           100 * data_wait)
        return {"epoch_time": epoch_time, "data_wait": data_wait}
